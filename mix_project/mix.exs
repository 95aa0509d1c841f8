# Mix project of quic_dist: Erlang distribution over QUIC.
#
# The Erlang sources stay in ../erlang/src (shared with the Makefile build) and the NIF is built
# by cargo from ../crates. No Hex package is needed: rustler is used as a Rust crate only, and
# the compiler that runs cargo (Mix.Tasks.Compile.QuicDistNif) is loaded from mix/ below.
#
# Use it from another project as a path (or git) dependency:
#
#     {:quic_dist, path: "path/to/quic_dist/mix_project"}
Code.require_file("mix/compile.quic_dist_nif.ex", __DIR__)

defmodule QuicDist.MixProject do
  use Mix.Project

  # The application resource file is generated from mix.exs, but description, version,
  # registered names and environment come from erlang/src/quic_dist.app.src, the one file the
  # Makefile build uses too, so that the two builds cannot drift apart.
  @app_src Path.expand("../erlang/src/quic_dist.app.src", __DIR__)
  @external_resource @app_src
  {:ok, [{:application, :quic_dist, app_src}]} = :file.consult(@app_src)
  @app_src_props app_src

  def project do
    [
      app: :quic_dist,
      version: to_string(@app_src_props[:vsn]),
      elixir: "~> 1.14",
      language: :erlang,
      erlc_paths: ["../erlang/src"],
      erlc_include_path: "../erlang/include",
      erlc_options: [:debug_info],
      elixirc_paths: elixirc_paths(Mix.env()),
      compilers: Mix.compilers() ++ [:quic_dist_nif],
      deps: [],
      description: to_string(@app_src_props[:description]),
      # The Mix task runs inside Mix only; quic_dist does not depend on :mix at run time.
      xref: [exclude: [Mix, Mix.Task, Mix.Shell, Mix.Project, ExUnit.Callbacks]]
    ]
  end

  def application do
    [
      description: @app_src_props[:description],
      registered: @app_src_props[:registered] || [],
      env: @app_src_props[:env] || [],
      # public_key decodes peer certificates (QuicDist.info/1) and encrypted key files;
      # elixir runs the QuicDist module. Listing them makes releases include them.
      extra_applications: [:public_key, :elixir]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
