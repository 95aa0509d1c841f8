//! wake_cost: what waking a sleeping thread costs on this machine, the cost that every hand-off
//! between threads pays (why the transport runs on the threads that use it, see `direct`).
//!
//! ```text
//! cargo run --release -p quic_dist_transport --example wake_cost
//! ```
//!
//! Two threads ping-pong a 60-byte UDP datagram over loopback 20 000 times, three times: once
//! with blocking receives (each datagram wakes the other thread from the kernel), once with
//! both threads polling non-blocking sockets. The difference is two wake-ups per round trip. On
//! the 2-core benchmark VM: 68-75 us p50 blocking, 6 us polling, so about 30 us per wake-up,
//! while quinn's own work for a 16-byte ping-pong is about 10 us.

use std::net::UdpSocket;
use std::time::Instant;

fn recv(socket: &UdpSocket, buf: &mut [u8], poll: bool) -> usize {
    loop {
        match socket.recv(buf) {
            Ok(n) => return n,
            Err(e) if poll && e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn pair(poll: bool) -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.connect(b.local_addr().expect("addr")).expect("connect");
    b.connect(a.local_addr().expect("addr")).expect("connect");
    a.set_nonblocking(poll).expect("nonblocking");
    b.set_nonblocking(poll).expect("nonblocking");
    (a, b)
}

fn main() {
    const ROUNDS: usize = 20_000;
    for poll in [false, true] {
        let (a, b) = pair(poll);
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for _ in 0..3 * ROUNDS {
                let n = recv(&b, &mut buf, poll);
                b.send(&buf[..n]).expect("send");
            }
        });
        let mut buf = [0u8; 2048];
        for run in 1..=3 {
            let mut us = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let t = Instant::now();
                a.send(&[1u8; 60]).expect("send");
                recv(&a, &mut buf, poll);
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            us.sort_by(f64::total_cmp);
            println!(
                "{}: run {run}: p50 {:.1} us, p99 {:.1} us",
                if poll { "polling " } else { "blocking" },
                us[ROUNDS / 2],
                us[ROUNDS * 99 / 100]
            );
        }
        echo.join().expect("echo thread");
    }
}
