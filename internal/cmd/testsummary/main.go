// Command testsummary reads `go test -json` output of the test tiers and
// prints, per tier and in total, how many tests passed, failed and skipped,
// with the output of every failure. It exits non-zero if anything failed, a
// package failed without a failing test (a build error, a crash), or a tier
// marked as required ran no test at all.
//
// Usage: testsummary [-require TIER]... TIER=FILE...
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type counts struct{ passed, failed, skipped, pkgFailures int }

type requiredTiers []string

func (r *requiredTiers) String() string     { return strings.Join(*r, ",") }
func (r *requiredTiers) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var required requiredTiers
	flag.Var(&required, "require", "a tier that must run at least one test (repeatable)")
	header := flag.String("header", "", "a line to print above the summary (e.g. the VM kernel)")
	flag.Parse()
	var total counts
	bad := false
	var lines []string
	for _, arg := range flag.Args() {
		tier, file, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "testsummary: want TIER=FILE, got %q\n", arg)
			os.Exit(2)
		}
		f, err := os.Open(file)
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: no results (%v)", tier, err))
			bad = true
			continue
		}
		c := summarize(tier, f, os.Stdout)
		f.Close()
		total.passed += c.passed
		total.failed += c.failed
		total.skipped += c.skipped
		line := fmt.Sprintf("%s: %d passed, %d failed, %d skipped", tier, c.passed, c.failed, c.skipped)
		if c.pkgFailures > 0 {
			line += fmt.Sprintf(" (%d packages failed outside any test)", c.pkgFailures)
			bad = true
		}
		for _, r := range required {
			if r == tier && c.passed+c.failed == 0 {
				line += " (required tier ran no test)"
				bad = true
			}
		}
		lines = append(lines, line)
	}
	fmt.Println()
	fmt.Println("==== test summary ====")
	if *header != "" {
		fmt.Println(*header)
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("total: %d passed, %d failed, %d skipped\n", total.passed, total.failed, total.skipped)
	if bad || total.failed > 0 {
		os.Exit(1)
	}
}

// summarize counts one tier and prints the output of its failures.
func summarize(tier string, r io.Reader, w io.Writer) counts {
	var c counts
	output := map[string]*strings.Builder{}
	key := func(e event) string { return e.Package + "\x00" + e.Test }
	var failedKeys []string
	failedTests := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: build errors and the like; keep it with the package.
			b := output["\x00"]
			if b == nil {
				b = &strings.Builder{}
				output["\x00"] = b
			}
			b.Write(line)
			b.WriteByte('\n')
			continue
		}
		k := key(e)
		switch e.Action {
		case "output":
			b := output[k]
			if b == nil {
				b = &strings.Builder{}
				output[k] = b
			}
			b.WriteString(e.Output)
		case "pass":
			if e.Test != "" {
				c.passed++
			}
		case "skip":
			if e.Test != "" {
				c.skipped++
			}
		case "fail":
			if e.Test != "" {
				c.failed++
				failedTests[e.Package] = true
			} else if !failedTests[e.Package] {
				c.pkgFailures++
			}
			failedKeys = append(failedKeys, k)
		}
	}
	sort.Strings(failedKeys)
	for _, k := range failedKeys {
		pkg, test, _ := strings.Cut(k, "\x00")
		if test == "" && failedTests[pkg] {
			continue
		}
		fmt.Fprintf(w, "\n--- %s: FAIL %s %s\n", tier, pkg, test)
		if b := output[k]; b != nil {
			fmt.Fprint(w, b.String())
		}
	}
	if c.pkgFailures > 0 {
		if b := output["\x00"]; b != nil {
			fmt.Fprintf(w, "\n--- %s: output outside any test\n%s", tier, b.String())
		}
	}
	return c
}
