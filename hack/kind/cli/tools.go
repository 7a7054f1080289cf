//go:build tools

// Package tools pins kind (the CLI and its node-image sources: images/base/files).
package tools

import _ "sigs.k8s.io/kind"
