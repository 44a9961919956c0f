// Package store is merlin's desired state in etcd: the key layout, the
// transaction builder every write goes through (the VIP index, revision
// conflicts, merges, the quota, deleting a service with its servers), the
// decoded State, Follow (list at a revision, watch from the next, relist
// on compaction or a closed watch) and the Watcher built on it, node status
// under leases and node drains. It imports no gRPC server, datapath,
// health, BGP or Prometheus code. It needs no privileges; it needs an etcd
// (a real cluster, or the embedded server of internal/etcdembed).
package store
