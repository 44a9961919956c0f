// Command gen writes merlin's Grafana dashboard (deploy/grafana/dashboard)
// as JSON to standard output: make generate puts it in
// deploy/grafana/merlin.json.
package main

import (
	"fmt"
	"os"

	"github.com/merlin-ipvs/merlin/deploy/grafana/dashboard"
)

func main() {
	out, err := dashboard.JSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
