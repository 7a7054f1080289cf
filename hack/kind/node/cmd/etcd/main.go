// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3),
// built at the release that matches the pinned Kubernetes.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
