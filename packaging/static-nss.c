/* Linked into the static binary only (packaging/build-static.sh), never into the Rust code.
 *
 * A statically linked glibc still reads /etc/nsswitch.conf, and for every service named there
 * besides `files` and `dns` (built in) it dlopens libnss_SERVICE.so.2 from the host. Those
 * modules are built against the host's glibc, not the one linked in: on Debian 11 a `resolve`
 * entry aborts the process (_dl_call_libc_early_init: Assertion `sym != NULL' failed), and
 * `myhostname`, `mdns4_minimal`, `sss` and the like are common on RHEL, Ubuntu and Amazon Linux.
 * So host names are looked up in /etc/hosts, then DNS (/etc/resolv.conf), and nothing else:
 * what the guard needs (IMDS, the regional AWS endpoints, the agent's checks), with no foreign
 * code loaded. Runs before main, while the process is still single-threaded. */
extern int __nss_configure_lookup(const char *dbname, const char *service_line);

__attribute__((constructor)) static void agent_guard_hosts_files_dns(void) {
  __nss_configure_lookup("hosts", "files dns");
}
