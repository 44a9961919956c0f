package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/merlin-ipvs/merlin/internal/version"
)

// docFlags are the flags that print documentation instead of running.
var docFlags = map[string]bool{"version": true, "print-config-template": true, "print-man": true}

// allFlags is merlin's flag set as parseFlags builds it, for documents.
func allFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("merlin", flag.ContinueOnError)
	o := &options{}
	var bf bgpFile
	var peers peerFlags
	registerFlags(fs, o)
	registerNodeFlags(fs, o)
	registerBGPFlags(fs, &bf, &peers)
	return fs
}

// printConfigTemplate writes every setting as a commented line of the
// configuration file, with its help and default: the package's
// /etc/merlin/merlin.yaml.
func printConfigTemplate(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `# merlin's configuration (merlin -config /etc/merlin/merlin.yaml).
# Every setting is a flag of merlin (merlin -help); keys are the flag
# names, and a flag given on the command line wins over the file. Each is
# shown commented out with its default. SIGHUP (systemctl reload merlin)
# re-reads the bgp section and node-labels; the rest applies at the next
# start. A full example with a bgp section: /usr/share/doc/merlin/merlin.yaml.example
`)
	fs.VisitAll(func(f *flag.Flag) {
		if docFlags[f.Name] || f.Name == "config" || strings.HasPrefix(f.Name, "bgp-") {
			return // the bgp section below says it all
		}
		def := yamlValue(f.DefValue)
		if f.Name == "node" {
			def = "the machine's hostname" // not the build machine's
		}
		fmt.Fprintf(w, "\n# %s\n#%s: %s\n", wrapComment(f.Usage), f.Name, def)
	})
	fmt.Fprint(w, `
# BGP: the section is read as a whole (see the example file and README).
#bgp:
#  local_as: 65001
#  router_id: 192.0.2.11
#  peers:
#    - address: 192.0.2.1
#      as: 65000
#      password_file: /etc/merlin/bgp-router1.key
#      hold_time: 9s
#      graceful_restart: 120s
#      bfd: true
`)
}

func wrapComment(s string) string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		if len(line)+len(word) > 72 && line != "" {
			lines, line = append(lines, line), ""
		}
		line = strings.TrimSpace(line + " " + word)
	}
	return strings.Join(append(lines, line), "\n# ")
}

func yamlValue(v string) string {
	if v == "" {
		return `""`
	}
	if _, err := strconv.ParseFloat(v, 64); err == nil || v == "true" || v == "false" {
		return v
	}
	return strconv.Quote(v)
}

// printManPage writes merlin(8) in roff.
func printManPage(w io.Writer, fs *flag.FlagSet, release string) error {
	date, err := version.SourceDate()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, ".TH MERLIN 8 %q %q \"merlin\"\n", date.Format("2006-01-02"), "merlin "+release)
	fmt.Fprint(w, `.SH NAME
merlin \- distributed IPVS manager: node agent and API
.SH SYNOPSIS
.B merlin
[\fIoptions\fR]
.SH DESCRIPTION
merlin turns several Linux machines into one clustered layer-4 load balancer.
The desired state (virtual services and their real servers) lives in etcd;
every node reconciles its kernel IPVS table to it, health-checks the real
servers, counts traffic with eBPF, exports Prometheus metrics and announces
the VIPs it can serve to routers by BGP. The gRPC API (port 4282) is driven
with \fBmeradm\fR(1). Run by systemd as merlin.service, with its settings in
/etc/merlin/merlin.yaml (keys are the option names below).
.SH OPTIONS
`)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "print-config-template" || f.Name == "print-man" {
			return
		}
		name, _ := flag.UnquoteUsage(f)
		fmt.Fprintf(w, ".TP\n.B \\-%s", roff(f.Name))
		if name != "" {
			fmt.Fprintf(w, " \\fI%s\\fR", roff(name))
		}
		fmt.Fprintf(w, "\n%s", roff(f.Usage))
		if f.Name == "node" {
			fmt.Fprint(w, " (default the machine's hostname)")
		} else if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(w, " (default %s)", roff(f.DefValue))
		}
		fmt.Fprintln(w)
	})
	fmt.Fprint(w, `.SH SIGNALS
SIGTERM stops merlin and leaves the dataplane (IPVS, VIP addresses, routes)
in place. SIGHUP re-reads the bgp section and node labels.
.SH FILES
/etc/merlin/merlin.yaml, /var/lib/merlin (the data directory),
/usr/share/merlin (Grafana dashboard, Prometheus rules).
.SH SEE ALSO
\fBmeradm\fR(1), \fBipvsadm\fR(8)
`)
	return nil
}

// roff escapes text for a man page.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// printDocs prints the configuration template or the man page when the
// command line asks for one alone, before any setting is checked.
func printDocs(args []string) bool {
	if len(args) != 1 {
		return false
	}
	switch strings.TrimLeft(args[0], "-") {
	case "print-config-template":
		printConfigTemplate(os.Stdout, allFlags())
	case "print-man":
		if err := printManPage(os.Stdout, allFlags(), version.Read().String()); err != nil {
			fmt.Fprintln(os.Stderr, "merlin:", err)
			os.Exit(1)
		}
	default:
		return false
	}
	return true
}
