//! `qtap-loadgen SECONDS [RATE]`: the event load of the pipeline benchmark
//! (`bench/pipeline.sh`). A writer thread sends 64-byte messages over one
//! loopback TCP connection to a reader thread of the same process, as fast
//! as it can or at RATE writes per second (paced per millisecond), for
//! SECONDS; then it prints `writes=N reads=M seconds=S` — the socket
//! syscalls it made, each one a traced event.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

const MESSAGE: [u8; 64] = [b'q'; 64];

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: qtap-loadgen SECONDS [RATE]"))
        .collect();
    let (seconds, rate) = match args[..] {
        [s] => (s, 0),
        [s, r] => (s, r),
        _ => panic!("usage: qtap-loadgen SECONDS [RATE]"),
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
