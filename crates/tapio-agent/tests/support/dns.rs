//! The DNS laboratory: real Debian DNS servers in a network namespace of their own, real
//! clients (`dig`, glibc's resolver through `getent`) in other namespaces, and every DNS
//! outcome the DNS observer must judge, made to happen on demand.
//!
//! One [`DnsLab`] is a server namespace and a client namespace joined by a veth pair:
//! - BIND (`named`) answers on [`Server::Main`]: NOERROR for [`ANSWERED`], NXDOMAIN for
//!   [`NXDOMAIN`], REFUSED for [`REFUSED`] (a zone with `allow-query { none; }`) and SERVFAIL
//!   for [`SERVFAIL`] (a secondary zone whose primary is dead, so it never loads). It also
//!   serves `cluster.local`, so a Kubernetes search list (`ndots:5`) expands into NXDOMAINs
//!   before the final name answers ([`DnsLab::getent`]).
//! - [`Server::Slow`] is a relay written here (netem is not built into the test-bed's
//!   kernel) that holds every query for [`DnsLab::set_slow_delay`] before passing it to BIND:
//!   UDP and TCP, IPv4 and IPv6.
//! - [`Server::Second`] is Unbound, an independent second server (for a resolver's second
//!   `nameserver` line, [`DnsLab::set_nameservers`]).
//! - [`DnsLab::blackhole`] drops everything sent to [`Server::Main`] with nftables in the
//!   server namespace: the queries reach the namespace and get no answer; its counters say
//!   how many packets it swallowed ([`DnsLab::blackholed_packets`]).
//! - [`DnsLab::send_udp`] sends hand-made datagrams ([`query_packet`]) for what dig cannot:
//!   floods of ids, reused ids, malformed queries (BIND answers FORMERR or NOTIMP).
//! - [`DnsLab::pod`] adds a client namespace whose processes run in a Kubernetes-shaped
//!   cgroup (`kubepods/...` or `kubepods.slice/...`), with pod UID and container id known.
//!
//! Every query says what the client saw ([`Answer`]: rcode, records, dig's own query time,
//! the client's pid, its address and port) and BIND's query log says what the server got
//! ([`DnsLab::server_queries`]). Everything the lab made (namespaces, processes, nftables
//! tables, `/etc/netns` files, cgroups, files) is removed on drop, also when a test panics;
//! labs left by a killed test process are removed by the next lab that starts.
//!
//! Addresses exist only inside the lab's namespaces: 10.53.<lab>.0/24 and
//! fd00:d5:1ab:<lab>::/64. The answers' addresses are documentation addresses (192.0.2.0/24,
//! 2001:db8::/32) that nothing contacts.

use super::cgroup::{KubeCgroup, V1_MEMORY, V2_UNIFIED};
use super::run;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A name with A (192.0.2.80) and AAAA (2001:db8::80) records: NOERROR.
pub const ANSWERED: &str = "www.dnslab.test";
pub const ANSWERED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
pub const ANSWERED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);
/// A name in the lab's zone that does not exist: NXDOMAIN.
pub const NXDOMAIN: &str = "missing.dnslab.test";
/// A name in a zone that refuses every query: REFUSED.
pub const REFUSED: &str = "x.refused.dnslab.test";
/// A name in a zone that never loaded (its primary is dead): SERVFAIL.
pub const SERVFAIL: &str = "x.servfail.dnslab.test";
/// A Kubernetes service name as a pod in namespace `a` writes it: with the lab's search list
/// the first expansion (`api.default.a.svc.cluster.local`) is NXDOMAIN and the second
/// (`api.default.svc.cluster.local`, A 192.0.2.81 and AAAA 2001:db8::81) answers.
pub const SERVICE_SHORT: &str = "api.default";
pub const SERVICE_FQDN: &str = "api.default.svc.cluster.local";
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 81);
/// The search list and options of every lab client's `/etc/resolv.conf`, as a pod in
/// namespace `a` has them. `timeout:1 attempts:1` keep a failure short; they do not change
/// what an answered lookup sends.
pub const SEARCH: [&str; 3] = ["a.svc.cluster.local", "svc.cluster.local", "cluster.local"];
pub const RESOLV_OPTIONS: &str = "options ndots:5 timeout:1 attempts:1";

/// Where the lab's namespaces' names start; with the test process id in them, a later lab
/// can tell a leftover of a dead process from a live lab.
const NS_PREFIX: &str = "dnslab-";
/// One lab number per lab in this process: it picks the lab's addresses, so two labs in one
/// test binary never share one and their evidence cannot be confused.
static NEXT_LAB: AtomicU8 = AtomicU8::new(0);
/// How far dig's "Query time" can fall short of the true send-to-receive time: BIND's tools
/// read a coarse clock that advances by one kernel tick (at most 10 ms at HZ=100). Seen here:
/// 448 ms for a relay that held the query 450 ms.
pub const DIG_CLOCK_TICK: Duration = Duration::from_millis(10);
/// Queries the slow relay holds at once; more are dropped and counted (bounded threads).
const RELAY_IN_FLIGHT: usize = 64;

/// Which server of the lab a query goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// BIND itself.
    Main,
    /// The delaying relay in front of BIND.
    Slow,
    /// Unbound, a second server independent of BIND (another implementation, its own
    /// address): NOERROR for [`ANSWERED`] (A and AAAA), NXDOMAIN for other names under
    /// `dnslab.test`, REFUSED for [`REFUSED`]. For a resolver's second `nameserver`.
    Second,
}

impl Server {
    pub const ALL: [Server; 3] = [Server::Main, Server::Slow, Server::Second];
    fn host(self) -> u8 {
        match self {
            Server::Main => 1,
            Server::Slow => 2,
            Server::Second => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Server::Main => "main",
            Server::Slow => "slow",
            Server::Second => "second",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One `dig` query. `Query::new(name)` is an A query over UDP/IPv4 to [`Server::Main`] from
/// the lab's client namespace, waiting 2 s; the builder methods change one thing each.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    pub name: String,
    pub qtype: String,
    pub server: Server,
    pub family: Family,
    pub tcp: bool,
    /// How long dig waits for the answer (`+time`, whole seconds, at least 1).
    pub wait: Duration,
    /// How often dig sends the query (`+tries`, default 1: an unanswered query is exactly
    /// one packet). More tries over UDP are retransmissions: same id, same source port.
    pub tries: u8,
    /// The client's source port (`dig -b addr#port`); None lets the kernel choose.
    pub source_port: Option<u16>,
    /// Ask from this pod's namespace and cgroup instead of the lab's client namespace.
    pub pod: Option<&'a Pod>,
    /// Ask this address instead of the server's own: a Service address that
    /// [`DnsLab::service_nat`] translates to the server in the client's OUTPUT hook.
    pub via: Option<IpAddr>,
}

impl<'a> Query<'a> {
    pub fn new(name: &str) -> Query<'a> {
        Query {
            name: name.to_string(),
            qtype: "A".into(),
            server: Server::Main,
            family: Family::V4,
            tcp: false,
            wait: Duration::from_secs(2),
            tries: 1,
            source_port: None,
            pod: None,
            via: None,
        }
    }
    pub fn qtype(mut self, qtype: &str) -> Self {
        self.qtype = qtype.to_string();
        self
    }
    pub fn server(mut self, server: Server) -> Self {
        self.server = server;
        self
    }
    pub fn slow(self) -> Self {
        self.server(Server::Slow)
    }
    pub fn v6(mut self) -> Self {
        self.family = Family::V6;
        self
    }
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
    pub fn tries(mut self, tries: u8) -> Self {
        self.tries = tries.max(1);
        self
    }
    pub fn source_port(mut self, port: u16) -> Self {
        self.source_port = Some(port);
        self
    }
    pub fn in_pod(mut self, pod: &'a Pod) -> Self {
        self.pod = Some(pod);
        self
    }
    pub fn via(mut self, service: IpAddr) -> Self {
        self.via = Some(service);
        self
    }
}

/// One answer record as dig printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: String,
    pub data: String,
}

/// What the client saw for one query.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The question as asked.
    pub name: String,
    pub qtype: String,
    /// "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...; None when no answer came.
    pub rcode: Option<String>,
    /// The transaction id of the answer (dig prints it only for an answer).
    pub id: Option<u16>,
    pub records: Vec<Record>,
    /// dig's own "Query time" (send to receive, milliseconds); None when no answer came.
    /// dig reads a coarse clock (one tick, a few milliseconds): compare with a tolerance of
    /// [`DIG_CLOCK_TICK`].
    pub client_latency_ms: Option<u64>,
    /// Wall clock around the whole dig process (start-up included): an upper bound.
    pub wall: Duration,
    /// Wall-clock time just before dig started and just after it exited: every kernel fact
    /// of this query falls between them.
    pub started: SystemTime,
    pub finished: SystemTime,
    /// The querying process (dig; it sends from a worker thread, so the thread's comm is
    /// not "dig", the process's is).
    pub client_pid: u32,
    pub client_comm: &'static str,
    /// The client namespace's address of the query's family; the port is the one asked for
    /// (`source_port`), else 0 (the kernel chose it; see [`DnsLab::server_queries`]).
    pub client: SocketAddr,
    pub client_netns: String,
    pub server: SocketAddr,
    pub tcp: bool,
    pub exit_code: Option<i32>,
    /// dig's whole output, for failure messages.
    pub output: String,
}

impl Answer {
    pub fn answered(&self) -> bool {
        self.rcode.is_some()
    }
    pub fn rcode(&self) -> &str {
        self.rcode.as_deref().unwrap_or("(no answer)")
    }
    /// The data of the answer records of type `rtype`.
    pub fn data(&self, rtype: &str) -> Vec<&str> {
        self.records.iter().filter(|r| r.rtype == rtype).map(|r| r.data.as_str()).collect()
    }
}

/// A glibc lookup through `getent hosts NAME` (gethostbyname) or `getent ahosts NAME`
/// (getaddrinfo, A and AAAA at once).
#[derive(Clone, Debug)]
pub struct Getent {
    pub exit_code: Option<i32>,
    /// (address, names) per line getent printed.
    pub lines: Vec<(IpAddr, Vec<String>)>,
    pub pid: u32,
    pub wall: Duration,
    pub started: SystemTime,
    pub finished: SystemTime,
    pub output: String,
}

impl Getent {
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.lines.iter().map(|(a, _)| *a).collect();
        out.dedup();
        out
    }
}

/// A query as BIND logged it (its query log): what reached the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerQuery {
    pub client: SocketAddr,
    pub name: String,
    pub qtype: String,
    pub tcp: bool,
    /// The server address it was sent to.
    pub server: IpAddr,
}

/// A process this lab ran in one of its client namespaces.
#[derive(Debug)]
pub struct Ran {
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    pub started: SystemTime,
    pub finished: SystemTime,
}

/// What [`DnsLab::send_udp`] sent and got back.
#[derive(Clone, Debug)]
pub struct RawExchange {
    /// The sending socket's address (the client address and port every packet came from).
    pub local: SocketAddr,
    pub started: SystemTime,
    pub finished: SystemTime,
    pub replies: Vec<RawReply>,
}

/// One reply datagram, read only as far as its header.
#[derive(Clone, Debug)]
pub struct RawReply {
    pub id: u16,
    /// From the send of the first packet to this reply's arrival, on the monotonic clock:
    /// a precise client-side latency (dig's own figure is coarse, see [`DIG_CLOCK_TICK`]).
    pub latency: Duration,
    /// The header's rcode (0 NOERROR, 1 FORMERR, 2 SERVFAIL, 3 NXDOMAIN, 4 NOTIMP, 5 REFUSED).
    pub rcode: u8,
    pub bytes: Vec<u8>,
}

impl RawReply {
    fn read(bytes: &[u8], latency: Duration) -> RawReply {
        let id = if bytes.len() >= 2 { u16::from_be_bytes([bytes[0], bytes[1]]) } else { 0 };
        let rcode = if bytes.len() >= 4 { bytes[3] & 0x0f } else { 0xff };
        RawReply { id, latency, rcode, bytes: bytes.to_vec() }
    }
    pub fn rcode_name(&self) -> &'static str {
        rcode_name(self.rcode)
    }
}

/// The mnemonic of a header rcode.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

/// A standard query (opcode 0, recursion desired, one question of class IN) for `name` and
/// `qtype` (1 A, 28 AAAA, ...) with transaction id `id`, as a stub resolver sends it.
pub fn query_packet(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    query_packet_with_opcode(id, name, qtype, 0)
}

/// [`query_packet`] with another opcode: BIND answers opcode 1 (IQUERY, retired) NOTIMP.
pub fn query_packet_with_opcode(id: u16, name: &str, qtype: u16, opcode: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + name.len() + 6);
    p.extend_from_slice(&id.to_be_bytes());
    p.push(((opcode & 0x0f) << 3) | 0x01); // QR=0, opcode, RD=1
    p.push(0);
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question, nothing else
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        assert!(label.len() < 64, "label {label:?} longer than 63 bytes: build that packet by hand");
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

/// A client network of the lab: a namespace with a veth to the server namespace.
#[derive(Clone, Debug)]
struct Link {
    netns: String,
    client_v4: Ipv4Addr,
    client_v6: Ipv6Addr,
}

pub struct DnsLab {
    tag: String,
    lab: u8,
    server_ns: String,
    client: Link,
    dir: PathBuf,
    named: Option<Child>,
    unbound: Option<Child>,
    relay: Option<Relay>,
    next_link: AtomicU8,
    /// Which servers are black-holed, by [`Server::host`] bit.
    blackholed: AtomicU8,
}

impl DnsLab {
    /// Builds a lab: namespaces `dnslab-<tag>-<pid>-<n>-srv` and `...-cli`, BIND, Unbound and
    /// the slow relay in the first, ready to answer when this returns (each has answered a
    /// probe query for [`ANSWERED`]). `tag` (letters, digits,
    /// '-') names the test; the namespaces carry it.
    pub fn start(tag: &str) -> DnsLab {
        // Namespaces, cgroups and servers are kernel work: only inside a kernel test's turn.
        super::assert_turn("a DNS lab");
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "lab tag {tag:?}: use letters, digits and '-'"
        );
        for tool in ["named", "unbound", "dig", "getent", "nft", "ip"] {
            assert!(
                which(tool),
                "the DNS lab needs `{tool}` (Debian bind9, unbound, bind9-dnsutils, nftables, iproute2): run scripts/setup"
            );
        }
        remove_leftovers_of_dead_labs();
        let lab = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        assert!(lab < 250, "more than 250 DNS labs in one test process");
        let pid = std::process::id();
        let base = format!("{NS_PREFIX}{tag}-{pid}-{lab}");
        let dir = std::env::temp_dir().join(format!("tapio-{base}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let server_ns = format!("{base}-srv");
        let client_ns = format!("{base}-cli");
        // From here on, Drop removes whatever was made, also if a step below panics.
        let mut this = DnsLab {
            tag: tag.to_string(),
            lab,
            server_ns: server_ns.clone(),
            client: Link {
                netns: client_ns.clone(),
                client_v4: Ipv4Addr::UNSPECIFIED,
                client_v6: Ipv6Addr::UNSPECIFIED,
            },
            dir,
            named: None,
            unbound: None,
            relay: None,
            next_link: AtomicU8::new(0),
            blackholed: AtomicU8::new(0),
        };
        run(&["ip", "netns", "add", &server_ns]);
        run(&["ip", "-n", &server_ns, "link", "set", "lo", "up"]);
        for server in Server::ALL {
            let v4 = this.server_addr(server, Family::V4);
            let v6 = this.server_addr(server, Family::V6);
            run(&["ip", "-n", &server_ns, "addr", "add", &format!("{v4}/32"), "dev", "lo"]);
            run(&["ip", "-n", &server_ns, "-6", "addr", "add", &format!("{v6}/128"), "dev", "lo", "nodad"]);
        }
        let k = this.next_link.fetch_add(1, Ordering::SeqCst);
        this.client = this.add_link(&client_ns, k);
        this.write_named_config();
        this.start_named();
        this.write_unbound_config();
        this.start_unbound();
        this.relay = Some(Relay::start(
            &server_ns,
            [this.server_socket(Server::Slow, Family::V4), this.server_socket(Server::Slow, Family::V6)],
            [this.server_socket(Server::Main, Family::V4), this.server_socket(Server::Main, Family::V6)],
        ));
        this.wait_until_ready();
        this
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The address of `server` in `family`: 10.53.<lab>.1 / fd00:d5:1ab:<lab>::1 for Main,
    /// .2 / ::2 for Slow, .3 / ::3 for Second, on the server namespace's loopback.
    pub fn server_addr(&self, server: Server, family: Family) -> IpAddr {
        let host = server.host();
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 53, self.lab, host)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xd5, 0x1ab, u16::from(self.lab), 0, 0, 0, u16::from(host))),
        }
    }

    pub fn server_socket(&self, server: Server, family: Family) -> SocketAddr {
        SocketAddr::new(self.server_addr(server, family), 53)
    }

    /// BIND's IPv4 address (port 53).
    pub fn server_v4(&self) -> IpAddr {
        self.server_addr(Server::Main, Family::V4)
    }

    /// BIND's IPv6 address (port 53).
    pub fn server_v6(&self) -> IpAddr {
        self.server_addr(Server::Main, Family::V6)
    }

    pub fn server_netns(&self) -> &str {
        &self.server_ns
    }

    /// The namespace queries come from unless they name a pod.
    pub fn client_netns(&self) -> &str {
        &self.client.netns
    }

    pub fn client_addr(&self, family: Family) -> IpAddr {
        self.client.addr(family)
    }

    /// Whether `addr` is one of the lab's (10.53.<lab>.0/24, fd00:d5:1ab:<lab>::/64): the
    /// agent also sees the rest of the machine's DNS traffic.
    pub fn holds(&self, addr: &str) -> bool {
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a.octets()[..3] == [10, 53, self.lab],
            Ok(IpAddr::V6(a)) => a.segments()[..4] == [0xfd00, 0xd5, 0x1ab, u16::from(self.lab)],
            Err(_) => false,
        }
    }

    /// The pid of BIND (in the server namespace).
    pub fn named_pid(&self) -> u32 {
        self.named.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sets how long the slow relay holds each query before passing it on.
    pub fn set_slow_delay(&self, delay: Duration) {
        if let Some(relay) = &self.relay {
            relay.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
        }
    }

    pub fn slow_delay(&self) -> Duration {
        Duration::from_millis(self.relay.as_ref().map(|r| r.delay_ms.load(Ordering::SeqCst)).unwrap_or(0))
    }

    /// Queries the slow relay dropped because it already held [`RELAY_IN_FLIGHT`].
    pub fn slow_relay_dropped(&self) -> u64 {
        self.relay.as_ref().map(|r| r.dropped.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// On: nftables in the server namespace drops every packet to BIND's addresses (UDP and
    /// TCP, both families) at input, so queries to [`Server::Main`] get no answer (nor do
    /// queries through the slow relay, which asks BIND). Off: removes the table.
    pub fn blackhole(&self, on: bool) {
        self.blackhole_server(Server::Main, on);
    }

    /// [`DnsLab::blackhole`] for any one server: each has its own nftables table
    /// (`tapio_dnslab_blackhole_<server>`) in the server namespace.
    pub fn blackhole_server(&self, server: Server, on: bool) {
        let bit = 1u8 << server.host();
        let was = self
            .blackholed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| Some(if on { b | bit } else { b & !bit }));
        if was.map(|b| b & bit != 0).unwrap_or(false) == on {
            return;
        }
        let table = format!("tapio_dnslab_blackhole_{}", server.name());
        if on {
            let v4 = self.server_addr(server, Family::V4);
            let v6 = self.server_addr(server, Family::V6);
            // One rule per line: the nft parser of older Debian releases wants it so.
            let ruleset = format!(
                "table inet {table} {{\n chain input {{\n  type filter hook input priority 0;\n  \
                 ip daddr {v4} udp dport 53 counter drop\n  ip daddr {v4} tcp dport 53 counter drop\n  \
                 ip6 daddr {v6} udp dport 53 counter drop\n  ip6 daddr {v6} tcp dport 53 counter drop\n }}\n}}\n"
            );
            let path = self.dir.join(format!("{table}.nft"));
            fs::write(&path, ruleset).expect("write nft ruleset");
            run(&["ip", "netns", "exec", &self.server_ns, "nft", "-f", &path.display().to_string()]);
        } else {
            run(&["ip", "netns", "exec", &self.server_ns, "nft", "delete", "table", "inet", &table]);
        }
    }

    /// Makes `service` a Service address of `server` for the lab's client namespace, as
    /// kube-proxy does for a node's own processes and hostNetwork pods: nftables DNAT in the
    /// OUTPUT hook (UDP and TCP port 53), so a query to `service` leaves for the server and
    /// its answer comes back from `service` once conntrack has undone the translation. The
    /// table goes with the namespace.
    pub fn service_nat(&self, service: Ipv4Addr, server: Server) {
        let target = self.server_addr(server, Family::V4);
        let ruleset = format!(
            "table ip tapio_dnslab_service {{\n chain output {{\n  type nat hook output priority -100;\n  \
             ip daddr {service} udp dport 53 dnat to {target}\n  ip daddr {service} tcp dport 53 dnat to {target}\n }}\n}}\n"
        );
        let path = self.dir.join("service-nat.nft");
        fs::write(&path, ruleset).expect("write nft ruleset");
        run(&["ip", "netns", "exec", &self.client.netns, "nft", "-f", &path.display().to_string()]);
    }

    /// Packets the black hole of `server` has swallowed since it was last turned on (0 when
    /// it is off): proof of how many queries went unanswered, retransmissions included.
    pub fn blackholed_packets(&self, server: Server) -> u64 {
        let table = format!("tapio_dnslab_blackhole_{}", server.name());
        let out = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "nft", "list", "table", "inet", &table])
            .output()
            .expect("nft list table");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Runs one `dig` query as the [`Query`] says and reports what the client saw.
    pub fn query(&self, q: &Query) -> Answer {
        let link = q.pod.map(|p| &p.link).unwrap_or(&self.client);
        let server = SocketAddr::new(q.via.unwrap_or(self.server_addr(q.server, q.family)), 53);
        let mut argv: Vec<String> = vec!["dig".into()];
        argv.push(if q.family == Family::V4 { "-4" } else { "-6" }.into());
        let client_ip = link.addr(q.family);
        if let Some(port) = q.source_port {
            argv.push("-b".into());
            argv.push(format!("{client_ip}#{port}"));
        }
        argv.push(format!("@{}", server.ip()));
        argv.push(q.name.clone());
        argv.push(q.qtype.clone());
        argv.push(format!("+time={}", q.wait.as_secs().max(1)));
        argv.push(format!("+tries={}", q.tries.max(1)));
        if q.tcp {
            argv.push("+tcp".into());
        }
        let ran = self.exec_in(link, q.pod, &argv);
        let parsed = parse_dig(&ran.stdout);
        Answer {
            name: q.name.clone(),
            qtype: q.qtype.clone(),
            rcode: parsed.rcode,
            id: parsed.id,
            records: parsed.records,
            client_latency_ms: parsed.query_time_ms,
            wall: ran.wall,
            started: ran.started,
            finished: ran.finished,
            client_pid: ran.pid,
            client_comm: "dig",
            client: SocketAddr::new(client_ip, q.source_port.unwrap_or(0)),
            client_netns: link.netns.clone(),
            server,
            tcp: q.tcp,
            exit_code: ran.exit_code,
            output: format!("{}{}", ran.stdout, ran.stderr),
        }
    }

    /// `getent hosts NAME` (`ahosts: false`) or `getent ahosts NAME` from the lab's client
    /// namespace or `pod`, through glibc's resolver with the lab's resolv.conf (BIND, the
    /// Kubernetes search list, `ndots:5`).
    pub fn getent(&self, name: &str, ahosts: bool, pod: Option<&Pod>) -> Getent {
        let link = pod.map(|p| &p.link).unwrap_or(&self.client);
        let argv: Vec<String> = vec!["getent".into(), if ahosts { "ahosts" } else { "hosts" }.into(), name.into()];
        let ran = self.exec_in(link, pod, &argv);
        let lines = ran
            .stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let addr = words.next()?.parse().ok()?;
                Some((addr, words.map(str::to_string).collect()))
            })
            .collect();
        Getent {
            exit_code: ran.exit_code,
            lines,
            pid: ran.pid,
            wall: ran.wall,
            started: ran.started,
            finished: ran.finished,
            output: format!("{}{}", ran.stdout, ran.stderr),
        }
    }

    /// Runs `argv` in the lab's client namespace (or `pod`'s namespace and cgroup) through
    /// `ip netns exec`, which also binds the namespace's /etc/netns files (resolv.conf) over
    /// /etc. `ip netns exec` execs the command in place, so the pid is the command's.
    pub fn run_client(&self, argv: &[&str], pod: Option<&Pod>) -> Ran {
        let link = pod.map(|p| &p.link).unwrap_or(&self.client);
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        self.exec_in(link, pod, &argv)
    }

    /// This answer's query as BIND logged it (the newest match: same name, type, transport,
    /// client address and server), which names the client's port when the kernel chose it.
    /// None for queries that never reached BIND (black-holed, or sent to Unbound; through
    /// the slow relay BIND sees the relay as the client).
    pub fn server_view(&self, answer: &Answer) -> Option<ServerQuery> {
        let name = answer.name.trim_end_matches('.').to_ascii_lowercase();
        self.server_queries().into_iter().rev().find(|q| {
            q.name.to_ascii_lowercase() == name
                && q.qtype.eq_ignore_ascii_case(&answer.qtype)
                && q.tcp == answer.tcp
                && q.client.ip() == answer.client.ip()
                && q.server == answer.server.ip()
        })
    }

    /// Sends each of `packets` as one UDP datagram from one socket in the lab's client
    /// namespace (or `pod`'s namespace; the sender is this test process, not in the pod's
    /// cgroup) to `server`, all at once, then collects replies for `wait` (or until there
    /// are as many replies as packets: a server answers a query once). For what `dig`
    /// cannot send: floods of distinct ids, reused ids, malformed queries (see
    /// [`query_packet`]).
    pub fn send_udp(&self, packets: &[Vec<u8>], server: SocketAddr, wait: Duration, pod: Option<&Pod>) -> RawExchange {
        let link = pod.map(|p| &p.link).unwrap_or(&self.client);
        let bind: SocketAddr = SocketAddr::new(link.addr(if server.is_ipv4() { Family::V4 } else { Family::V6 }), 0);
        let packets = packets.to_vec();
        in_netns(&link.netns, move || {
            let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            let local = socket.local_addr().expect("local addr");
            let started = SystemTime::now();
            let sent = Instant::now();
            for p in &packets {
                socket.send_to(p, server).unwrap_or_else(|e| panic!("send to {server}: {e}"));
            }
            let deadline = Instant::now() + wait;
            let mut replies = Vec::new();
            let mut buf = [0u8; 65535];
            while replies.len() < packets.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left)).expect("read timeout");
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) if from == server => replies.push(RawReply::read(&buf[..n], sent.elapsed())),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            RawExchange { local, started, finished: SystemTime::now(), replies }
        })
    }

    /// What BIND's query log holds so far: every query that reached BIND, oldest first
    /// (queries through the slow relay show the relay as client).
    pub fn server_queries(&self) -> Vec<ServerQuery> {
        let log = fs::read_to_string(self.dir.join("query.log")).unwrap_or_default();
        log.lines().filter_map(parse_query_log_line).collect()
    }

    /// Adds a pod: its own network namespace (`dnslab-<tag>-<pid>-<n>-pod<k>`, linked to the
    /// server namespace) and a Kubernetes-shaped cgroup that the pod's processes join in
    /// every cgroup hierarchy that has a place for it (v1 memory, v2). `systemd` picks the
    /// systemd driver's names (`kubepods.slice/...scope`), else cgroupfs
    /// (`kubepods/burstable/pod<uid>/<id>`).
    pub fn pod(&self, systemd: bool) -> Pod {
        let k = self.next_link.fetch_add(1, Ordering::SeqCst);
        let netns = format!("{NS_PREFIX}{}-{}-{}-pod{k}", self.tag, std::process::id(), self.lab);
        // The cgroup first: if the link fails, dropping the half-made pod removes both.
        let mut pod = Pod {
            link: Link { netns: netns.clone(), client_v4: Ipv4Addr::UNSPECIFIED, client_v6: Ipv6Addr::UNSPECIFIED },
            cgroup: PodCgroup::new(self.lab, k, systemd),
        };
        pod.link = self.add_link(&netns, k);
        pod
    }

    /// The resolv.conf every lab client (client namespace, pods) has.
    pub fn resolv_conf(&self) -> String {
        self.resolv_conf_with(&[self.server_v4()])
    }

    /// Makes namespace `netns` with a veth to the server namespace: link k uses
    /// 10.53.<lab>.(4k+4)/30 (server .4k+5, client .4k+6) and fd00:d5:1ab:<lab>:<k+1>::/80.
    fn add_link(&self, netns: &str, k: u8) -> Link {
        assert!(k < 60, "more than 60 client namespaces in one DNS lab");
        let net = 4 * (u16::from(k) + 1);
        let server_v4 = Ipv4Addr::new(10, 53, self.lab, (net + 1) as u8);
        let client_v4 = Ipv4Addr::new(10, 53, self.lab, (net + 2) as u8);
        let v6 = |host| Ipv6Addr::new(0xfd00, 0xd5, 0x1ab, u16::from(self.lab), u16::from(k) + 1, 0, 0, host);
        let (server_v6, client_v6) = (v6(1), v6(2));
        let server_dev = format!("c{k}");
        run(&["ip", "netns", "add", netns]);
        // Made directly inside the two namespaces: no name in the host's namespace to clash.
        run(&[
            "ip",
            "link",
            "add",
            "name",
            &server_dev,
            "netns",
            &self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        ]);
        run(&["ip", "-n", &self.server_ns, "addr", "add", &format!("{server_v4}/30"), "dev", &server_dev]);
        run(&[
            "ip",
            "-n",
            &self.server_ns,
            "-6",
            "addr",
            "add",
            &format!("{server_v6}/80"),
            "dev",
            &server_dev,
            "nodad",
        ]);
        run(&["ip", "-n", netns, "addr", "add", &format!("{client_v4}/30"), "dev", "eth0"]);
        run(&["ip", "-n", netns, "-6", "addr", "add", &format!("{client_v6}/80"), "dev", "eth0", "nodad"]);
        run(&["ip", "-n", &self.server_ns, "link", "set", &server_dev, "up"]);
        run(&["ip", "-n", netns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", netns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", netns, "route", "add", "default", "via", &server_v4.to_string()]);
        run(&["ip", "-n", netns, "-6", "route", "add", "default", "via", &server_v6.to_string()]);
        let etc = Path::new("/etc/netns").join(netns);
        fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("mkdir {}: {e}", etc.display()));
        fs::write(etc.join("resolv.conf"), self.resolv_conf()).expect("write resolv.conf");
        Link { netns: netns.to_string(), client_v4, client_v6 }
    }

    fn exec_in(&self, link: &Link, pod: Option<&Pod>, argv: &[String]) -> Ran {
        let mut cmd = self.client_command(link, pod, argv);
        let started = SystemTime::now();
        let t0 = Instant::now();
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip netns exec {} {argv:?}: {e}", link.netns));
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for the client");
        let wall = t0.elapsed();
        Ran {
            pid,
            exit_code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            wall,
            started,
            finished: SystemTime::now(),
        }
    }

    /// `ip netns exec <netns> argv`, joining the pod's cgroups first when there is a pod.
    fn client_command(&self, link: &Link, pod: Option<&Pod>, argv: &[String]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &link.netns]).args(argv).stdin(Stdio::null());
        if let Some(pod) = pod {
            let procs: Vec<std::ffi::CString> = pod
                .cgroup
                .procs_files()
                .iter()
                .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("cgroup path"))
                .collect();
            // SAFETY: only open/write/close (async-signal-safe) on memory made before fork.
            unsafe {
                cmd.pre_exec(move || {
                    for path in &procs {
                        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // "0": the writing process itself joins the cgroup.
                        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                        if n != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    fn write_named_config(&self) {
        let dir = self.dir.display().to_string();
        let (v4, v6) = (self.server_v4(), self.server_v6());
        let conf = format!(
            r#"options {{
  directory "{dir}";
  pid-file none;
  session-keyfile none;
  listen-on port 53 {{ {v4}; }};
  listen-on-v6 port 53 {{ {v6}; }};
  recursion no;
  notify no;
  dnssec-validation no;
  querylog yes;
}};
controls {{ }};
logging {{
  channel queries_file {{ file "{dir}/query.log"; }};
  category queries {{ queries_file; }};
  channel to_stderr {{ stderr; severity info; print-time yes; }};
  category default {{ to_stderr; }};
}};
zone "dnslab.test" {{ type primary; file "{dir}/dnslab.test.zone"; }};
zone "cluster.local" {{ type primary; file "{dir}/cluster.local.zone"; }};
zone "refused.dnslab.test" {{ type primary; file "{dir}/refused.zone"; allow-query {{ none; }}; }};
// Its primary is a closed port on the server namespace's loopback: the zone never loads
// and every query for it is answered SERVFAIL.
zone "servfail.dnslab.test" {{ type secondary; primaries {{ 127.0.0.1 port 9; }}; file "{dir}/servfail.zone"; }};
"#
        );
        let soa = "$TTL 60\n@ IN SOA ns.dnslab.test. admin.dnslab.test. 1 60 60 600 60\n";
        let zones = [
            ("named.conf", conf),
            (
                "dnslab.test.zone",
                format!(
                    "{soa}@ IN NS ns\nns IN A {v4}\nns IN AAAA {v6}\nwww IN A {ANSWERED_V4}\nwww IN AAAA {ANSWERED_V6}\n\
                     refused IN NS ns\nservfail IN NS ns\n"
                ),
            ),
            (
                "cluster.local.zone",
                format!("{soa}@ IN NS ns.dnslab.test.\napi.default.svc IN A {SERVICE_V4}\napi.default.svc IN AAAA 2001:db8::81\n"),
            ),
            ("refused.zone", format!("{soa}@ IN NS ns.dnslab.test.\nx IN A 192.0.2.82\n")),
        ];
        for (file, text) in zones {
            fs::write(self.dir.join(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
        }
    }

    fn start_named(&mut self) {
        let log = File::create(self.dir.join("named.out")).expect("create named.out");
        let conf = self.dir.join("named.conf").display().to_string();
        // -f: foreground (a child this lab owns); -n 1: one worker thread is plenty.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "named", "-f", "-n", "1", "-c", &conf])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start named");
        self.named = Some(child);
    }

    /// Waits until BIND answers both families and the relay passes a query on; fails with
    /// BIND's log after 15 s.
    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let probes = [
            Query::new(ANSWERED),
            Query::new(ANSWERED).v6(),
            Query::new(ANSWERED).slow(),
            Query::new(ANSWERED).server(Server::Second),
            Query::new(ANSWERED).server(Server::Second).v6(),
        ];
        for probe in probes {
            loop {
                if let Some(Ok(Some(status))) = self.named.as_mut().map(Child::try_wait) {
                    panic!("named exited ({status}):\n{}", self.named_log());
                }
                if let Some(Ok(Some(status))) = self.unbound.as_mut().map(Child::try_wait) {
                    panic!("unbound exited ({status}):\n{}", self.unbound_log());
                }
                let answer = self.query(&probe.clone().wait(Duration::from_secs(1)));
                if answer.rcode.as_deref() == Some("NOERROR") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the DNS lab did not answer {probe:?} in 15 s: {}\n{}\n{}",
                    answer.output,
                    self.named_log(),
                    self.unbound_log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// BIND's own log (start-up, zone loading), for failure messages.
    pub fn named_log(&self) -> String {
        fs::read_to_string(self.dir.join("named.out")).unwrap_or_default()
    }

    fn write_unbound_config(&self) {
        let dir = self.dir.display().to_string();
        let (v4, v6) = (self.server_addr(Server::Second, Family::V4), self.server_addr(Server::Second, Family::V6));
        let lab = self.lab;
        let conf = format!(
            r#"server:
  interface: {v4}
  interface: {v6}
  port: 53
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  log-queries: yes
  log-replies: yes
  num-threads: 1
  do-ip6: yes
  module-config: "iterator"
  access-control: 10.53.{lab}.0/24 allow
  access-control: fd00:d5:1ab:{lab:x}::/64 allow
  local-zone: "dnslab.test." static
  local-data: "{ANSWERED}. 60 IN A {ANSWERED_V4}"
  local-data: "{ANSWERED}. 60 IN AAAA {ANSWERED_V6}"
  local-zone: "refused.dnslab.test." refuse
remote-control:
  control-enable: no
"#
        );
        fs::write(self.dir.join("unbound.conf"), conf).expect("write unbound.conf");
    }

    fn start_unbound(&mut self) {
        let log = File::create(self.dir.join("unbound.out")).expect("create unbound.out");
        let conf = self.dir.join("unbound.conf").display().to_string();
        // -d: foreground (a child this lab owns); it logs each query and reply to stderr.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "unbound", "-d", "-c", &conf])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start unbound");
        self.unbound = Some(child);
    }

    /// Unbound's own log (queries and replies included), for failure messages.
    pub fn unbound_log(&self) -> String {
        fs::read_to_string(self.dir.join("unbound.out")).unwrap_or_default()
    }

    /// The pid of Unbound ([`Server::Second`], in the server namespace).
    pub fn unbound_pid(&self) -> u32 {
        self.unbound.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Rewrites the resolv.conf of the lab's client namespace (or `pod`'s) to use these
    /// servers in this order, keeping the search list and options; glibc tries them in turn
    /// (each `timeout:1`, once).
    pub fn set_nameservers(&self, servers: &[IpAddr], pod: Option<&Pod>) {
        let link = pod.map(|p| &p.link).unwrap_or(&self.client);
        let path = Path::new("/etc/netns").join(&link.netns).join("resolv.conf");
        fs::write(&path, self.resolv_conf_with(servers)).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The resolv.conf text for `servers` with the lab's search list and options.
    pub fn resolv_conf_with(&self, servers: &[IpAddr]) -> String {
        let mut text: String = servers.iter().map(|s| format!("nameserver {s}\n")).collect();
        let _ = writeln!(text, "search {}\n{RESOLV_OPTIONS}", SEARCH.join(" "));
        text
    }

    /// Starts `argv` in the lab's client namespace (or `pod`'s namespace and cgroup) and
    /// returns once it runs there (its own program, in the namespace): a long-lived client
    /// whose pid the test knows ([`Child::id`]), with stdin, stdout and stderr piped. The
    /// caller waits for or kills it; the lab kills whatever still runs in its namespaces
    /// when dropped.
    pub fn spawn_client(&self, argv: &[&str], pod: Option<&Pod>) -> Child {
        let link = pod.map(|p| &p.link).unwrap_or(&self.client);
        let owned: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut child = self
            .client_command(link, pod, &owned)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip netns exec {} {argv:?}: {e}", link.netns));
        // `ip` joins the namespace, then execs the command: wait for both.
        let want = format!("net:[{}]", netns_inode(&link.netns));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pid = child.id();
            let ns = fs::read_link(format!("/proc/{pid}/ns/net")).map(|p| p.display().to_string()).unwrap_or_default();
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let execed = exe.file_name().map(|n| n != "ip").unwrap_or(false);
            if ns == want && execed {
                return child;
            }
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                panic!("{argv:?} did not start in {} ({ns} {exe:?}): {out:?}", link.netns);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        for mut server in [self.named.take(), self.unbound.take()].into_iter().flatten() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let mut namespaces: Vec<String> = vec![self.client.netns.clone()];
        let base = format!("{NS_PREFIX}{}-{}-{}-pod", self.tag, std::process::id(), self.lab);
        namespaces.extend(list_netns().into_iter().filter(|n| n.starts_with(&base)));
        namespaces.push(self.server_ns.clone());
        for ns in namespaces {
            remove_netns(&ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A pod of the lab: its network namespace and its Kubernetes-shaped cgroup. Dropping it
/// removes both (killing what still runs in them).
#[derive(Debug)]
pub struct Pod {
    link: Link,
    pub cgroup: PodCgroup,
}

impl Pod {
    pub fn netns(&self) -> &str {
        &self.link.netns
    }
    pub fn addr(&self, family: Family) -> IpAddr {
        self.link.addr(family)
    }
    pub fn pod_uid(&self) -> &str {
        &self.cgroup.pod_uid
    }
    pub fn container_id(&self) -> &str {
        &self.cgroup.container_id
    }
    /// The cgroup path from the hierarchy root, as the agent names it.
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup.path
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_netns(&self.link.netns);
    }
}

impl Link {
    fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.client_v4),
            Family::V6 => IpAddr::V6(self.client_v6),
        }
    }
}

/// A pod's container cgroup, shaped as the kubelet makes it ([`KubeCgroup`]), in every
/// hierarchy here that has a place for it: the v1 memory controller (hybrid nodes name
/// containers there) and the cgroup2 tree (`/sys/fs/cgroup/unified` on hybrid nodes,
/// `/sys/fs/cgroup` on pure v2), with one pod UID and container id in all of them.
#[derive(Debug)]
pub struct PodCgroup {
    parts: Vec<KubeCgroup>,
    /// From the hierarchy root, as the agent names it (the same in every hierarchy).
    pub path: String,
    pub pod_uid: String,
    pub container_id: String,
}

impl PodCgroup {
    fn new(lab: u8, k: u8, systemd: bool) -> PodCgroup {
        let pid = std::process::id();
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        // "d15b" marks the DNS lab's pods; pid, lab and pod number make them unique.
        let pod_uid = format!("{pid:08x}-d15b-4{lab:03x}-8{k:03x}-{:012x}", nanos & 0xffff_ffff_ffff);
        let container_id = format!("{pid:08x}d15b{lab:02x}{k:02x}{}", "0123456789abcdef".repeat(3));
        let mut parts = Vec::new();
        for mount in cgroup_hierarchies() {
            let mount = mount.display().to_string();
            parts.push(KubeCgroup::with_ids(&mount, systemd, &pod_uid, &container_id, None));
        }
        assert!(!parts.is_empty(), "no cgroup hierarchy for a pod (neither v1 memory nor cgroup2)");
        PodCgroup { path: parts[0].path.clone(), parts, pod_uid, container_id }
    }

    /// The container's directory in each hierarchy.
    pub fn leaves(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.leaf.clone()).collect()
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.leaf.join("cgroup.procs")).collect()
    }
}

/// The hierarchies a pod cgroup is made in (see [`PodCgroup`]).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    [V1_MEMORY, V2_UNIFIED].iter().map(PathBuf::from).filter(|p| p.join("cgroup.procs").exists()).collect()
}

/// The slow server: UDP and TCP listeners on the Slow addresses that hold each query for
/// `delay_ms`, then ask BIND and pass its answer back. Written here because the test-bed
/// kernel has no netem; a thread per query, at most [`RELAY_IN_FLIGHT`] at once.
struct Relay {
    delay_ms: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(netns: &str, listen: [SocketAddr; 2], upstream: [SocketAddr; 2]) -> Relay {
        let delay_ms = Arc::new(AtomicU64::new(300));
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (listen, upstream) in listen.into_iter().zip(upstream) {
            let ctx = RelayCtx {
                delay_ms: delay_ms.clone(),
                dropped: dropped.clone(),
                stop: stop.clone(),
                in_flight: in_flight.clone(),
                upstream,
            };
            // Sockets made on a thread that joined the server namespace belong to it, and
            // threads it spawns start in it too.
            let (udp, tcp) = in_netns(netns, move || {
                let udp = UdpSocket::bind(listen).unwrap_or_else(|e| panic!("relay bind udp {listen}: {e}"));
                let tcp = TcpListener::bind(listen).unwrap_or_else(|e| panic!("relay bind tcp {listen}: {e}"));
                (udp, tcp)
            });
            let ns = netns.to_string();
            let c = ctx.clone();
            threads.push(std::thread::spawn(move || {
                enter_netns(&ns);
                relay_udp(udp, c)
            }));
            let ns = netns.to_string();
            threads.push(std::thread::spawn(move || {
                enter_netns(&ns);
                relay_tcp(tcp, ctx)
            }));
        }
        Relay { delay_ms, dropped, stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct RelayCtx {
    delay_ms: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    upstream: SocketAddr,
}

impl RelayCtx {
    /// Takes a place for one held query, or counts a drop.
    fn admit(&self) -> bool {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= RELAY_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        true
    }
    fn hold(&self) {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
    }
}

const POLL: Duration = Duration::from_millis(50);
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);

fn relay_udp(socket: UdpSocket, ctx: RelayCtx) {
    socket.set_read_timeout(Some(POLL)).expect("relay read timeout");
    let socket = Arc::new(socket);
    let mut buf = [0u8; 65535];
    while !ctx.stop.load(Ordering::SeqCst) {
        let Ok((n, client)) = socket.recv_from(&mut buf) else { continue };
        if !ctx.admit() {
            continue;
        }
        let query = buf[..n].to_vec();
        let (socket, ctx) = (socket.clone(), ctx.clone());
        std::thread::spawn(move || {
            ctx.hold();
            let any: SocketAddr = if ctx.upstream.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let answer = UdpSocket::bind(any).and_then(|up| {
                up.set_read_timeout(Some(UPSTREAM_WAIT))?;
                up.send_to(&query, ctx.upstream)?;
                let mut buf = [0u8; 65535];
                let n = up.recv(&mut buf)?;
                Ok(buf[..n].to_vec())
            });
            // No answer upstream (black-holed): the client gets none either, as from a
            // forwarder whose upstream is silent.
            if let Ok(answer) = answer {
                let _ = socket.send_to(&answer, client);
            }
            ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn relay_tcp(listener: TcpListener, ctx: RelayCtx) {
    listener.set_nonblocking(true).expect("relay nonblocking");
    while !ctx.stop.load(Ordering::SeqCst) {
        let Ok((mut client, _)) = listener.accept() else {
            std::thread::sleep(POLL);
            continue;
        };
        if !ctx.admit() {
            continue;
        }
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let _ = (|| -> std::io::Result<()> {
                client.set_nonblocking(false)?;
                client.set_read_timeout(Some(UPSTREAM_WAIT))?;
                // DNS over TCP: each message is preceded by its two-byte length.
                loop {
                    let mut len = [0u8; 2];
                    if client.read_exact(&mut len).is_err() {
                        return Ok(());
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    client.read_exact(&mut query)?;
                    ctx.hold();
                    let mut up = TcpStream::connect_timeout(&ctx.upstream, UPSTREAM_WAIT)?;
                    up.set_read_timeout(Some(UPSTREAM_WAIT))?;
                    up.write_all(&len)?;
                    up.write_all(&query)?;
                    let mut alen = [0u8; 2];
                    up.read_exact(&mut alen)?;
                    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(alen))];
                    up.read_exact(&mut answer)?;
                    client.write_all(&alen)?;
                    client.write_all(&answer)?;
                }
            })();
            ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Joins network namespace `ns` on the calling thread only.
fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: joining a network namespace by fd affects the calling thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// What dig printed, read.
#[derive(Default)]
struct Dig {
    rcode: Option<String>,
    id: Option<u16>,
    records: Vec<Record>,
    query_time_ms: Option<u64>,
}

fn parse_dig(out: &str) -> Dig {
    let mut dig = Dig::default();
    let mut in_answer = false;
    for line in out.lines() {
        if let Some(header) = line.split_once("->>HEADER<<-").map(|(_, h)| h) {
            for field in header.split(',') {
                match field.trim().split_once(": ") {
                    Some(("status", v)) => dig.rcode = Some(v.trim().to_string()),
                    Some(("id", v)) => dig.id = v.trim().parse().ok(),
                    _ => {}
                }
            }
        } else if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
        } else if in_answer && (line.is_empty() || line.starts_with(';')) {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                dig.records.push(Record { name: f[0].into(), rtype: f[3].into(), data: f[4..].join(" ") });
            }
        } else if let Some(t) = line.strip_prefix(";; Query time: ") {
            dig.query_time_ms = t.trim_end_matches(" msec").trim().parse().ok();
        }
    }
    dig
}

/// Reads one BIND query-log line: `client @0x.. 10.53.0.6#41234 (name): query: name IN A
/// +E(0)K (10.53.0.1)`; the flags hold `T` for TCP.
fn parse_query_log_line(line: &str) -> Option<ServerQuery> {
    let (_, rest) = line.split_once("client @")?;
    let mut words = rest.split_whitespace();
    let _handle = words.next()?;
    let (addr, port) = words.next()?.rsplit_once('#')?;
    let client = SocketAddr::new(addr.parse().ok()?, port.parse().ok()?);
    let (_, q) = rest.split_once("query: ")?;
    let f: Vec<&str> = q.split_whitespace().collect();
    if f.len() < 5 {
        return None;
    }
    let server = f[4].trim_start_matches('(').trim_end_matches(')').parse().ok()?;
    Some(ServerQuery { client, name: f[0].to_string(), qtype: f[2].to_string(), tcp: f[3].contains('T'), server })
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file())).unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|p| Path::new(p).join(tool).is_file())
}

/// The inode of network namespace `ns` (what /proc/<pid>/ns/net names as `net:[inode]`).
pub fn netns_inode(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/var/run/netns/{ns}");
    fs::metadata(&path).unwrap_or_else(|e| panic!("stat {path}: {e}")).ino()
}

fn list_netns() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn kill_pids(pids: &str) {
    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: signalling a process that runs in a namespace or cgroup this lab made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills what runs in namespace `ns`, deletes it (its veth ends, addresses and nftables
/// tables go with it) and its /etc/netns directory.
fn remove_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        kill_pids(&String::from_utf8_lossy(&out.stdout));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// Removes the namespaces (and their files) of labs whose test process is gone: a test
/// binary killed mid-run cannot run its Drop.
fn remove_leftovers_of_dead_labs() {
    for ns in list_netns() {
        let Some(rest) = ns.strip_prefix(NS_PREFIX) else { continue };
        // dnslab-<tag>-<pid>-<lab>-<role>: the pid is the third field from the end.
        let fields: Vec<&str> = rest.rsplitn(4, '-').collect();
        let Some(pid) = fields.get(2).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_netns(&ns);
            if let Some(lab) = fields.get(1) {
                let tag = fields.get(3).copied().unwrap_or("");
                let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("tapio-{NS_PREFIX}{tag}-{pid}-{lab}")));
            }
        }
    }
}

/// `name` as the resolver asks it after appending each search domain, in order, then the
/// name itself (the `ndots:5` path for a name with fewer than five dots).
pub fn search_expansions(name: &str) -> Vec<String> {
    let mut names: Vec<String> = SEARCH.iter().map(|d| format!("{name}.{d}")).collect();
    names.push(name.to_string());
    names
}

/// A one-line summary of answers, for failure messages.
pub fn describe(answers: &[&Answer]) -> String {
    let mut s = String::new();
    for a in answers {
        let _ = writeln!(s, "pid {} -> {} rcode {} in {:?}", a.client_pid, a.server, a.rcode(), a.client_latency_ms);
    }
    s
}
