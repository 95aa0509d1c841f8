defmodule ClusterApp.MixProject do
  use Mix.Project

  def project do
    [
      app: :cluster_app,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      releases: releases()
    ]
  end

  def application do
    [
      mod: {ClusterApp.Application, []},
      extra_applications: [:logger]
    ]
  end

  defp deps do
    [
      # quic_dist's Mix project (mix_project/ of the quic_dist repository). Compiling it runs
      # cargo to build the NIF: Rust must be installed. No Hex package is involved.
      {:quic_dist, path: "../.."}
    ]
  end

  defp releases do
    [
      cluster_app: [
        # The release carries quic_dist's code and NIF (lib/quic_dist-VSN/{ebin,priv}); the
        # boot script puts that ebin on the code path before the kernel starts distribution,
        # so rel/vm.args.eex only needs `-proto_dist quic`.
        include_executables_for: [:unix]
      ]
    ]
  end
end
