# The tests start BEAM nodes that register with epmd; start it if it is not running.
{_, 0} = System.cmd("epmd", ["-daemon"])

ExUnit.start(
  formatters: [ExUnit.CLIFormatter, QuicDistTest.CountsFormatter],
  # Nodes boot in about a second each; the release test builds and boots releases.
  timeout: 120_000
)
