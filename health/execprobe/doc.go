// Package execprobe runs exec health checks the way keepalived's
// enable_script_security does: only programs from one allow-listed
// directory that only root can change, never through a shell, as an
// unprivileged user, each in its own process group that is killed when the
// check times out, with a minimal environment and bounded output. Running
// programs as another user needs CAP_SETUID and CAP_SETGID; Linux only.
package execprobe
