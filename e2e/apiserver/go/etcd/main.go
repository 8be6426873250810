// Command etcd is the etcd server for Ordo's real-API-server test tier (e2e/apiserver), built
// from the pinned go.etcd.io/etcd/server/v3 release: the upstream entry point, unchanged.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
