package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// completeFromAPI completes a service ID as the first argument and, with
// servers, one of that service's server addresses as the second, from the
// cluster itself (a List within two seconds; nothing when it cannot).
func (g *globals) completeFromAPI(servers bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 1 || (len(args) == 1 && !servers) {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		if flagsFromEnv(cmd) != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		_ = g.clientFor(2*time.Second, func(ctx context.Context, c types.MerlinClient) error {
			list, err := listAll(ctx, c)
			if err != nil {
				return err
			}
			for _, item := range list.Items {
				switch {
				case len(args) == 0 && strings.HasPrefix(item.Service.Id, toComplete):
					out = append(out, item.Service.Id)
				case len(args) == 1 && item.Service.Id == args[0]:
					for _, srv := range item.Servers {
						if k := model.ServerKeyString(srv.Key); strings.HasPrefix(k, toComplete) {
							out = append(out, k)
						}
					}
				}
			}
			return nil
		})
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
