package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/merlin-ipvs/merlin/internal/version"
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
			date, err := version.SourceDate()
			if err != nil {
				return err
			}
			hdr.Date = &date
			if err := doc.GenManTree(root, hdr, args[0]); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			return nil
		},
	}
}
