import Config

# quic_dist options can also live here (they end up in sys.config, which the VM reads before
# distribution starts). Paths are fixed when the release is built. Example:
#
#     config :quic_dist,
#       certfile: "/etc/cluster_app/node.pem",
#       keyfile: "/etc/cluster_app/node_key.pem",
#       cacertfile: "/etc/cluster_app/ca.pem"
#
# Do NOT put them in config/runtime.exs: it is evaluated after distribution started.

config :logger, level: :info
