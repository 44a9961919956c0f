// Package control is merlin's control plane: the model and its validation,
// the desired state in etcd (Store, State, Watcher), the gRPC API (Server)
// and, with later issues, the node agent. It needs no privileges; it needs
// an etcd (a real cluster, or the embedded single-node server it can start).
package control
