package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manCmd writes meradm's man pages (section 1, one per command) into a
// directory: the Debian package's. Hidden: it is for packaging.
func manCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write the man pages into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root.DisableAutoGenTag = true // reproducible: no date in the pages
			hdr := &doc.GenManHeader{Title: "MERADM", Section: "1", Source: "merlin " + root.Version, Manual: "merlin"}
			if t, err := sourceDate(); err != nil {
				return err
			} else if !t.IsZero() {
				hdr.Date = &t
			}
			if err := doc.GenManTree(root, hdr, args[0]); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			return nil
		},
	}
}

// sourceDate is $SOURCE_DATE_EPOCH (reproducible builds), zero if unset.
func sourceDate() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Time{}, nil
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", shorten(v), err)
	}
	return time.Unix(secs, 0).UTC(), nil
}
