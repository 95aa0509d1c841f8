# Latency distributions of bench/run.sh (called by it):
#   gnuplot -e "dir='DIR'; out='FILE.svg'; rtt='tcp tls quic'; hol='tcp tls quic'" bench/plot.gp
# DIR holds rtt_CARRIER.dat and hol_CARRIER.dat: "microseconds fraction_slower" per line.
# Log-log complementary CDF: the further right a curve reaches at a given height, the slower
# that fraction of round trips (1e-2 = p99, 1e-3 = p99.9).
panels = (words(rtt) > 0) + (words(hol) > 0)
set terminal svg size (panels > 1 ? 1100 : 600),460 dynamic font "sans,12" background rgb "white"
set output out
col(c) = (c eq "tcp") ? 1 : ((c eq "tls") ? 2 : 3)
set logscale xy
set xtics ("1 µs" 1, "10 µs" 10, "100 µs" 100, "1 ms" 1e3, "10 ms" 1e4, "100 ms" 1e5, \
           "1 s" 1e6, "10 s" 1e7, "100 s" 1e8)
set format y "%g"
set yrange [5e-5:1]
set grid xtics ytics mxtics
set key bottom left
set xlabel "round-trip time"
set ylabel "fraction of round trips slower"
set multiplot layout 1,panels title "Erlang distribution on loopback: ping-pong round trips (1 - CDF)"
if (words(rtt) > 0) {
  set title "idle connection"
  plot for [c in rtt] dir."/rtt_".c.".dat" using 1:2 with lines lt col(c) lw 2 title c
}
if (words(hol) > 0) {
  set title "while another pair streams 8 MiB messages"
  plot for [c in hol] dir."/hol_".c.".dat" using 1:2 with lines lt col(c) lw 2 title c
}
unset multiplot
