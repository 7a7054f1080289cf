//go:build tools

// Package tools pins CoreDNS at the version kubeadm (hack/kind/node's release) deploys.
package tools

import _ "github.com/coredns/coredns"
