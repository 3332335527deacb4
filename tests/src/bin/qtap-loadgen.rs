//! `qtap-loadgen SECONDS [RATE]`: the event load of the pipeline benchmark
//! (`bench/pipeline.sh`). A writer thread sends 64-byte messages over one
//! loopback TCP connection to a reader thread of the same process, as fast
//! as it can or at RATE writes per second (paced per millisecond), for
//! SECONDS; then it prints `writes=N reads=M seconds=S` — the socket
//! syscalls it made, each one a traced event.
//!
//! `qtap-loadgen SECONDS ping-pong`: one thread writes a message and reads
//! it back from the other end, in turn, as fast as it can: the cost of a
//! syscall and of whatever probes it runs, without the two threads'
//! contention for the socket's lock (which makes the threaded load's rate
//! swing by half from run to run) (`bench/probes.sh`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

const MESSAGE: [u8; 64] = [b'q'; 64];

fn main() {
    const USAGE: &str = "usage: qtap-loadgen SECONDS [RATE | ping-pong]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[1] == "ping-pong" {
        ping_pong(args[0].parse().expect(USAGE));
        return;
    }
    let args: Vec<u64> = args.iter().map(|a| a.parse().expect(USAGE)).collect();
    let (seconds, rate) = match args[..] {
        [s] => (s, 0),
        [s, r] => (s, r),
        _ => panic!("{USAGE}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let reader = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut reads = 0u64;
        while conn.read(&mut buf).expect("read") > 0 {
            reads += 1;
        }
        reads
    });
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut writes = 0u64;
    while Instant::now() < end {
        if rate > 0 {
            // Writes due by now; sleep a millisecond when ahead.
            let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
            if writes >= due {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        for _ in 0..64 {
            conn.write_all(&MESSAGE).expect("write");
            writes += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(conn);
    let reads = reader.join().expect("reader") + 1; // and the read of EOF
    println!("writes={writes} reads={reads} seconds={elapsed:.3}");
}

/// One thread, one loopback TCP connection: write a message on one end,
/// read it on the other, for `seconds`.
fn ping_pong(seconds: u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (mut server, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut rounds = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            client.write_all(&MESSAGE).expect("write");
            server.read_exact(&mut buf).expect("read");
            rounds += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("writes={rounds} reads={rounds} seconds={elapsed:.3}");
}
