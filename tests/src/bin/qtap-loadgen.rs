//! `qtap-loadgen SECONDS [RATE] [tcp | pipe]`: the event load of the
//! pipeline benchmark (`bench/pipeline.sh`). A writer thread sends 64-byte
//! messages to a reader thread of the same process, as fast as it can or
//! at RATE writes per second (paced per millisecond; 0: as fast), for
//! SECONDS; then it prints `writes=N reads=M seconds=S` — the syscalls it
//! made, each one a traced event. Over one loopback TCP connection (`tcp`,
//! the default), or over a pipe (`pipe`): a pipe's write and read cost a
//! fraction of TCP's, so the load can outrun what the pipeline carries
//! instead of being bounded by the kernel's TCP stack on the cores it
//! shares with qtapd and the followers.
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
    const USAGE: &str = "usage: qtap-loadgen SECONDS [RATE] [tcp | pipe] | SECONDS ping-pong";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let seconds = |s: &str| s.parse::<u64>().expect(USAGE);
    let (seconds, rate, transport) = match words[..] {
        [s, "ping-pong"] => {
            ping_pong(seconds(s));
            return;
        }
        [s] => (seconds(s), 0, "tcp"),
        [s, r] => (seconds(s), r.parse().expect(USAGE), "tcp"),
        [s, r, t @ ("tcp" | "pipe")] => (seconds(s), r.parse().expect(USAGE), t),
        _ => panic!("{USAGE}"),
    };
    let (mut sink, source): (Box<dyn Write + Send>, Box<dyn Read + Send>) = if transport == "pipe" {
        let (source, sink) = std::io::pipe().expect("pipe");
        (Box::new(sink), Box::new(source))
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        conn.set_nodelay(true).expect("nodelay");
        let (server, _) = listener.accept().expect("accept");
        (Box::new(conn), Box::new(server))
    };
    let reader = thread::spawn(move || {
        let mut source = source;
        let mut buf = vec![0u8; 64 * 1024];
        let mut reads = 0u64;
        while source.read(&mut buf).expect("read") > 0 {
            reads += 1;
        }
        reads
    });
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
            sink.write_all(&MESSAGE).expect("write");
            writes += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(sink);
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
