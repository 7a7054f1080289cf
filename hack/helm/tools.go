//go:build tools

// Package tools keeps Helm's CLI (helm.sh/helm/v4/cmd/helm) in the module graph.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
