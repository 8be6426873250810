// The upstream main of kube-scheduler (k8s.io/kubernetes v1.37.2, unchanged), built for Ordo's
// real-API-server test tier (e2e/apiserver). Copyright The Kubernetes Authors, Apache-2.0.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register" // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version" // for version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	command := app.NewSchedulerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
