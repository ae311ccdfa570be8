//! The scenarios' workloads: this same binary, run as a child in a scenario's cgroup. Each
//! joins its cgroup first (before it has any other thread), so everything it does is
//! accounted there.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};

const WORKER_THREADS: usize = 4;

fn join_cgroup(args: &[String]) -> Result<(), ExitCode> {
    let Some(procs) = args.first() else {
        eprintln!("workload: missing CGROUP_PROCS");
        return Err(ExitCode::from(2));
    };
    std::fs::write(procs, std::process::id().to_string()).map_err(|e| {
        eprintln!("workload: joining {procs}: {e}");
        ExitCode::from(2)
    })
}

/// A process with four workers that exits 3 from its main thread while they all still run:
/// one process exit (exit_group) of five threads, which must be one abnormal_exit.
pub fn threads_exit(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let started = Arc::new(Barrier::new(WORKER_THREADS + 1));
    for _ in 0..WORKER_THREADS {
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            started.wait();
            // Parked until the group exit takes them; bounded so a stray run ends anyway.
            for _ in 0..600 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
    started.wait();
    // The kernel's count, so the runner can tell this really was multi-threaded.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim).unwrap_or("?");
    println!("threads {threads}");
    let _ = std::io::stdout().flush();
    std::process::exit(3);
}

/// `threads` threads (the main one included) that all touch memory a MiB at a time, from
/// the same moment on, until their memory cgroup's OOM killer kills the process: a
/// multi-threaded victim whose threads all leave at once, the case where kernels without
/// `group_dead` let two of them see themselves as the last. Bounded: a hog that is never
/// killed stops at 256 MiB per thread and exits 0, which the scenario reports.
pub fn hog(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let threads: usize = match args.get(1).map(|n| n.parse()) {
        None => 1,
        Some(Ok(n)) if (1..=64).contains(&n) => n,
        Some(_) => {
            eprintln!("hog: THREADS must be 1..=64");
            return ExitCode::from(2);
        }
    };
    let start = Arc::new(Barrier::new(threads));
    for _ in 1..threads {
        let start = Arc::clone(&start);
        std::thread::spawn(move || allocate(&start));
    }
    let kept = allocate(&start);
    println!("hog: allocated {kept} MiB without being killed");
    ExitCode::SUCCESS
}

/// Waits for every thread, then fills 1 MiB blocks (filled, not just reserved: only touched
/// pages count as anon rss) up to 256 MiB. Returns how many it kept.
fn allocate(start: &Barrier) -> usize {
    start.wait();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 0..256u32 {
        kept.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    kept.len()
}

/// A busy loop in its cgroup for SECS seconds (default 60): CPU demand for a CFS quota to
/// throttle.
pub fn spin(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60u64);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut spins = 0u64;
    while std::time::Instant::now() < end {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
    ExitCode::SUCCESS
}

/// One DNS query (type A) for NAME to SERVER (ip:53), waiting up to a second for the
/// answer; prints the answer's rcode, or `rcode none` when none came. Over UDP from a
/// connected socket (a real client's order: connect, send, receive), or with a fourth
/// argument `tcp` over TCP (the message behind its two-byte length, in one write).
pub fn dns_query(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let (Some(server), Some(name)) = (args.get(1), args.get(2)) else {
        eprintln!("dns-query: usage: dns-query CGROUP_PROCS SERVER NAME [tcp]");
        return ExitCode::from(2);
    };
    let over_tcp = args.get(3).is_some_and(|t| t == "tcp");
    // Header: id, flags (recursion desired), one question.
    let mut query = vec![0x4b, 0x51, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let timeout = Some(std::time::Duration::from_secs(1));
    let rcode = if over_tcp {
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        let exchange = std::net::TcpStream::connect(server.as_str()).and_then(|mut stream| {
            stream.set_read_timeout(timeout)?;
            stream.write_all(&framed)?;
            let mut answer = [0u8; 2 + 12];
            stream.read_exact(&mut answer)?;
            Ok(answer[2 + 3] & 0x0f)
        });
        match exchange {
            Ok(rcode) => Some(rcode),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                eprintln!("dns-query: {server}: {e}");
                return ExitCode::from(2);
            }
            Err(_) => None,
        }
    } else {
        let socket = match std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.connect(server.as_str()).map(|()| s))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("dns-query: {server}: {e}");
                return ExitCode::from(2);
            }
        };
        let _ = socket.set_read_timeout(timeout);
        if let Err(e) = socket.send(&query) {
            eprintln!("dns-query: send: {e}");
            return ExitCode::from(2);
        }
        let mut answer = [0u8; 512];
        match socket.recv(&mut answer) {
            Ok(n) if n >= 12 => Some(answer[3] & 0x0f),
            _ => None,
        }
    };
    match rcode {
        Some(rcode) => println!("rcode {rcode}"),
        None => println!("rcode none"),
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}
