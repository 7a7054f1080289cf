//go:build tools

// Package tools keeps Argo CD's main package in the module graph.
package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
