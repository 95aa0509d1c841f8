defmodule Mix.Tasks.Compile.QuicDistNif do
  @moduledoc """
  Builds the quic_dist NIF with cargo and installs it as `priv/quic_dist_nif.so` of the
  quic_dist application in `_build`.

  Runs `cargo build --release -p quic_dist_nif` in the repository root (the directory that
  holds `Cargo.toml`, one level above `mix_project/`). Cargo's own build cache makes repeated
  runs cheap (a fraction of a second when nothing changed); the first build takes about a
  minute. The library is copied only when it changed, and the old copy is deleted first: a
  library that a running VM has mapped must never be overwritten in place.

  `quic_dist_nif.erl` finds the library next to its own `.beam` (`../priv`), so it loads
  during boot, when distribution starts.

  Environment:

    * `CARGO` - the cargo executable (default: `cargo` on `PATH`, then `~/.cargo/bin/cargo`)
    * `CARGO_TARGET_DIR` - cargo's target directory (default: `target/` in the repository root)

  This file is loaded by `mix.exs` with `Code.require_file/2`; it is not part of the
  application's compiled code.
  """
  use Mix.Task.Compiler

  @shortdoc "Builds the quic_dist NIF (cargo) into priv/"

  @repo_root Path.expand("../..", __DIR__)
  @crate "quic_dist_nif"
  @library "libquic_dist_nif.so"
  @installed "quic_dist_nif.so"

  @impl Mix.Task.Compiler
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, switches: [force: :boolean, verbose: :boolean])
    cargo = find_cargo!()
    check_nif_headers!()
    build!(cargo, opts)
    install(Keyword.get(opts, :force, false))
  end

  @impl Mix.Task.Compiler
  def manifests, do: [installed_path()]

  @impl Mix.Task.Compiler
  def clean do
    _ = File.rm(installed_path())
    :ok
  end

  @doc false
  def repo_root, do: @repo_root

  @doc false
  def built_library do
    target =
      case System.get_env("CARGO_TARGET_DIR") do
        nil -> Path.join(@repo_root, "target")
        "" -> Path.join(@repo_root, "target")
        dir -> Path.expand(dir, @repo_root)
      end

    Path.join([target, "release", @library])
  end

  @doc false
  def installed_path, do: Path.join([Mix.Project.app_path(), "priv", @installed])

  defp find_cargo! do
    candidates =
      case System.get_env("CARGO") do
        cargo when is_binary(cargo) and cargo != "" ->
          [System.find_executable(cargo) || cargo]

        _ ->
          [System.find_executable("cargo"), Path.expand("~/.cargo/bin/cargo")]
      end

    case Enum.find(candidates, &(is_binary(&1) and executable?(&1))) do
      nil ->
        Mix.raise("""
        quic_dist: cargo not found (looked for #{describe_cargo_lookup()}).

        quic_dist's NIF is written in Rust and is built with cargo when the :quic_dist
        application compiles. Install Rust 1.80 or later with rustup:

            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh

        then open a new shell (or add ~/.cargo/bin to PATH), or point the CARGO environment
        variable at the cargo executable.
        """)

      cargo ->
        cargo
    end
  end

  defp describe_cargo_lookup do
    case System.get_env("CARGO") do
      cargo when is_binary(cargo) and cargo != "" -> "CARGO=#{cargo}"
      _ -> "`cargo` on PATH and #{Path.expand("~/.cargo/bin/cargo")}"
    end
  end

  defp executable?(path) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :regular, mode: mode}} -> Bitwise.band(mode, 0o111) != 0
      _ -> false
    end
  end

  # The NIF API headers that come with the Erlang runtime (Debian splits them off into
  # erlang-dev). They must match the runtime that will load the library.
  defp check_nif_headers! do
    root = to_string(:code.root_dir())
    erts = "erts-#{:erlang.system_info(:version)}"

    dirs = [
      Path.join([root, erts, "include"]),
      Path.join([root, "usr", "include"])
    ]

    unless Enum.any?(dirs, &File.regular?(Path.join(&1, "erl_nif.h"))) do
      Mix.raise("""
      quic_dist: the Erlang NIF headers (erl_nif.h) were not found in
      #{Enum.map_join(dirs, "\n", &"    #{&1}")}

      They are part of the Erlang/OTP development files, needed to build NIFs. Install them:

          Debian/Ubuntu:  apt-get install erlang-dev
          Fedora/RHEL:    dnf install erlang-erts-devel (or erlang)
          Alpine:         apk add erlang-dev

      (OTP built from source, kerl, asdf or the official Docker images include them.)
      """)
    end
  end

  defp build!(cargo, opts) do
    args = ["build", "--release", "-p", @crate]
    command = "#{Path.basename(cargo)} #{Enum.join(args, " ")}"

    {output, status} =
      if opts[:verbose] do
        Mix.shell().info("==> quic_dist: #{command} (in #{@repo_root})")

        System.cmd(cargo, args,
          cd: @repo_root,
          stderr_to_stdout: true,
          into: IO.stream(:stdio, :line)
        )
      else
        # Quiet when cargo has nothing to do (every `mix compile` runs this compiler);
        # a note when it takes a while.
        task =
          Task.async(fn -> System.cmd(cargo, args, cd: @repo_root, stderr_to_stdout: true) end)

        case Task.yield(task, 2_000) do
          {:ok, result} ->
            result

          nil ->
            Mix.shell().info(
              "==> quic_dist: building the NIF: #{command} (in #{@repo_root}; " <>
                "a first build takes about a minute)"
            )

            Task.await(task, :infinity)
        end
      end

    if status != 0 do
      unless opts[:verbose], do: Mix.shell().info(output)

      Mix.raise("""
      quic_dist: `#{command}` failed with exit status #{status} (output above).
      A C compiler is needed too (Debian/Ubuntu: apt-get install build-essential).
      """)
    end
  end

  defp install(force?) do
    source = built_library()
    target = installed_path()

    unless File.regular?(source) do
      Mix.raise(
        "quic_dist: cargo succeeded but #{source} does not exist (is CARGO_TARGET_DIR set?)"
      )
    end

    if not force? and up_to_date?(source, target) do
      {:noop, []}
    else
      File.mkdir_p!(Path.dirname(target))
      # Delete, then copy: a VM that has the old library loaded keeps its mapping of the
      # deleted file, while overwriting the file in place could crash it.
      _ = File.rm(target)
      File.cp!(source, target)
      Mix.shell().info("==> quic_dist: installed #{Path.relative_to_cwd(target)}")
      {:ok, []}
    end
  end

  defp up_to_date?(source, target) do
    with {:ok, s} <- File.stat(source, time: :posix),
         {:ok, t} <- File.stat(target, time: :posix) do
      s.size == t.size and t.mtime >= s.mtime
    else
      _ -> false
    end
  end
end
