// Package ipvs programs the Linux kernel's IP Virtual Server table over
// generic netlink: services (address, port and protocol, or firewall mark;
// IPv4 and IPv6; TCP, UDP, SCTP), their destinations, 64-bit counters,
// global timeouts and version information.
//
// Writes go through Apply, which sends many operations in one sendmsg and
// reports exactly which ones failed; Diff computes the operations that turn
// one table into another. Reads dump services and, per service, their
// destinations.
//
// Privileges and kernel: reading needs the ip_vs module (or its autoload);
// writing needs CAP_NET_ADMIN in the network namespace the Client is opened
// in. Tests that need IPVS skip on kernels without it, except inside the
// test VM (MERLIN_VM=1), where they fail instead.
package ipvs
