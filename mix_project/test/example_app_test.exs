defmodule QuicDist.ExampleAppTest do
  @moduledoc """
  End to end, with the example application (examples/cluster_app) copied to a temporary
  directory and depending on this project as `{:quic_dist, path: ...}`:

    * `iex --erl "-pa _build/dev/lib/quic_dist/ebin -proto_dist quic" --name ... -S mix`
    * `mix quic_dist.gen.certs` run from the dependent project
    * `MIX_ENV=prod mix release`, two releases started with `bin/cluster_app daemon` forming a
      cluster over QUIC, `rpc`, `remote`, `stop`; in cookie mode and in certificate mode
      (vm flags from rel/env.sh.eex, and sys.config).

  Cargo reuses the repository's target/ directory, so the NIF is not rebuilt.
  """
  use ExUnit.Case, async: false

  alias QuicDistTest.Peers

  @moduletag :example_app
  @moduletag timeout: 240_000

  @mix_project Path.expand("..", __DIR__)
  @example Path.join(@mix_project, "examples/cluster_app")

  setup_all do
    dir =
      Path.join(
        System.tmp_dir!(),
        "quic_dist_example_#{System.pid()}_#{:erlang.unique_integer([:positive])}"
      )

    on_exit(fn -> File.rm_rf(dir) end)
    File.mkdir_p!(dir)

    for entry <- ~w(mix.exs .formatter.exs lib rel config),
        File.exists?(Path.join(@example, entry)) do
      File.cp_r!(Path.join(@example, entry), Path.join(dir, entry))
    end

    mix_exs = Path.join(dir, "mix.exs")
    source = File.read!(mix_exs)
    patched = String.replace(source, ~s(path: "../.."), ~s(path: #{inspect(@mix_project)}))
    assert patched != source, "examples/cluster_app/mix.exs no longer has path: \"../..\""
    File.write!(mix_exs, patched)

    %{app: dir, cookie: "cluster_#{System.pid()}_#{:rand.uniform(1_000_000_000)}"}
  end

  describe "development: iex -S mix" do
    test "iex with -pa of the dependency's ebin joins a cluster over QUIC", %{app: app} do
      mix!(app, "dev", ["compile"])
      ebin = Path.join(app, "_build/dev/lib/quic_dist/ebin")
      assert File.regular?(Path.join(ebin, "quic_dist.beam"))
      assert File.regular?(Path.join(app, "_build/dev/lib/quic_dist/priv/quic_dist_nif.so"))

      name = Peers.unique_name("iex")
      node = :"#{name}@127.0.0.1"

      port =
        open(System.find_executable("iex"), app, [{"MIX_ENV", "dev"}], [
          "--erl",
          "-pa _build/dev/lib/quic_dist/ebin -proto_dist quic",
          "--name",
          "#{name}@127.0.0.1",
          "--cookie",
          Peers.cookie(),
          "-S",
          "mix"
        ])

      on_exit(fn ->
        kill_port_process(port, name)
        Peers.kill_matching([name])
      end)

      await_output(port, ~r/iex\(#{Regex.escape(name)}@127\.0\.0\.1\)\d+>/, 60_000)

      # A peer (over QUIC, same cookie) uses the application running in iex.
      b = Peers.start(prefix: "b")
      assert Peers.call(b, Node, :connect, [node]) == true
      assert Peers.call(b, GenServer, :call, [{ClusterApp.Counter, node}, :bump]) == {node, 1}

      assert {:ok, %{mode: :cookie, tls_version: "TLSv1.3"}} =
               Peers.call(b, :rpc, :call, [node, QuicDist, :info, [b.node]])

      # ... and the iex session sees it, over quic_dist.
      Port.command(
        port,
        "IO.puts(\"CHECK \" <> inspect({Node.list(), QuicDist.connections(), QuicDist.distributed_over_quic?()}))\n"
      )

      out = await_output(port, ~r/CHECK .*\}\n/)
      [_, check] = Regex.run(~r/CHECK (.*)\}\n/, out)
      assert check =~ inspect(b.node)
      assert check =~ "true"

      Port.command(port, "System.halt()\n")
      assert_receive {^port, {:exit_status, 0}}, 20_000
    end
  end

  describe "releases" do
    test "mix quic_dist.gen.certs in the dependent app, then two releases in cookie mode and two in certificate mode",
         %{app: app, cookie: cookie} do
      tmp = Peers.tmp_dir()
      certs = Path.join(tmp, "certs")

      # The Mix task works from the application that depends on quic_dist.
      out =
        mix!(app, "prod", [
          "quic_dist.gen.certs",
          certs,
          "c",
          "127.0.0.1,localhost",
          "d",
          "127.0.0.1"
        ])

      assert out =~ "quic_dist certificates in #{certs}"
      assert Enum.sort(File.ls!(certs)) == ~w(c.pem c_key.pem ca.pem ca_key.pem d.pem d_key.pem)

      {seconds, out} = timed(fn -> mix!(app, "prod", ["release", "--overwrite"]) end)
      IO.puts("\n  [release] mix release took #{seconds} s")
      assert out =~ "Release created"
      rel = Path.join(app, "_build/prod/rel/cluster_app")

      assert File.regular?(
               Path.join(rel, "lib/quic_dist-#{quic_dist_vsn()}/priv/quic_dist_nif.so")
             )

      assert File.read!(Path.join(rel, "releases/0.1.0/vm.args")) =~ ~r/^-proto_dist quic$/m

      assert File.read!(Path.join(rel, "releases/0.1.0/remote.vm.args")) =~
               ~r/^-proto_dist quic$/m

      # --- cookie mode --------------------------------------------------------------------
      a = release_node(rel, tmp, "a", cookie)
      b = release_node(rel, tmp, "b", cookie, %{"CLUSTER_APP_PEERS" => a.name})
      start_daemon!(a)
      start_daemon!(b)

      # b connects to a at start (ClusterApp.Joiner); `rpc` nodes are hidden and not listed.
      assert {:ok, _} = eventually_rpc(a, "IO.inspect(Node.list())", &(&1 =~ b.name))
      assert rpc!(b, "IO.inspect(Node.list())") =~ a.name
      assert rpc!(a, "IO.inspect(:init.get_argument(:proto_dist))") =~ "quic"

      assert rpc!(a, "IO.inspect(ClusterApp.Counter.bump(:\"#{b.name}\"))") =~
               "{:\"#{b.name}\", 1}"

      assert rpc!(a, "IO.inspect(ClusterApp.Counter.bump(:\"#{b.name}\"))") =~
               "{:\"#{b.name}\", 2}"

      info =
        rpc!(a, "{:ok, i} = QuicDist.info(:\"#{b.name}\"); IO.inspect({i.mode, i.tls_version})")

      assert info =~ ~s({:cookie, "TLSv1.3"})

      # bin/cluster_app remote: an IEx shell on the node, over QUIC.
      if script = System.find_executable("script") do
        # (Concatenated so that the terminal's echo of the typed line does not match.)
        expr =
          ~s[IO.puts("REMOTE_" <> "CHECK " <> inspect({node(), Node.list()}, width: :infinity))]

        assert remote_shell(a, script, expr) =~
                 ~s(REMOTE_CHECK {:"#{a.name}", [:"#{b.name}"]})
      end

      # bin/cluster_app restart: b restarts in place (init:restart/0, the same OS process,
      # which loads the NIF a second time); its counter starts again from 0, and a reaches it.
      os_pid_b = rpc!(b, "IO.puts(System.pid())")
      {out, status} = cmd(b, ["restart"])
      assert status == 0, "restart #{b.name}: #{out}"

      assert {:ok, _} =
               eventually_rpc(
                 a,
                 "IO.inspect(ClusterApp.Counter.value(:\"#{b.name}\"))",
                 &(&1 =~ ~r/^0\s*$/),
                 30_000
               )

      assert rpc!(b, "IO.puts(System.pid())") == os_pid_b

      stop!(b)
      stop!(a)

      # --- certificate mode ---------------------------------------------------------------
      # c: certificate options through rel/env.sh.eex (QUIC_DIST_* -> -quic_dist_opt);
      # d: the :quic_dist application environment in the release's sys.config.
      cert_env = fn base ->
        %{
          "QUIC_DIST_CERTFILE" => Path.join(certs, "#{base}.pem"),
          "QUIC_DIST_KEYFILE" => Path.join(certs, "#{base}_key.pem"),
          "QUIC_DIST_CACERTFILE" => Path.join(certs, "ca.pem")
        }
      end

      sys_config = Path.join(tmp, "d_sys")

      write_sys_config!(
        Path.join(rel, "releases/0.1.0/sys.config"),
        sys_config <> ".config",
        certs,
        "d"
      )

      c = release_node(rel, tmp, "c", cookie, cert_env.("c"))
      # d's own VM reads sys.config; its rpc/stop nodes (start_clean, no sys.config) need
      # the flags, so they get the same variables.
      d =
        release_node(
          rel,
          tmp,
          "d",
          cookie,
          Map.merge(cert_env.("d"), %{"CLUSTER_APP_PEERS" => c.name})
        )

      d_daemon = %{
        d
        | env:
            d.env
            |> Map.drop(Map.keys(cert_env.("d")))
            |> Map.put("RELEASE_SYS_CONFIG", sys_config)
      }

      start_daemon!(c)
      start_daemon!(d_daemon, d)

      assert {:ok, _} = eventually_rpc(c, "IO.inspect(Node.list())", &(&1 =~ d.name))

      info =
        rpc!(
          d,
          "{:ok, i} = QuicDist.info(:\"#{c.name}\"); IO.inspect({i.mode, i.peer_certificate})"
        )

      assert info =~ "{:certificates,"
      assert info =~ "CN=c"

      assert rpc!(d, "IO.inspect(ClusterApp.Counter.bump(:\"#{c.name}\"))") =~
               "{:\"#{c.name}\", 1}"

      assert rpc!(c, "IO.inspect(QuicDist.info(:\"#{d.name}\") |> elem(1) |> Map.get(:mode))") =~
               ":certificates"

      # An rpc node without a certificate (cookie mode) is refused, although it has the cookie.
      {out, status} =
        rpc(%{c | env: Map.drop(c.env, Map.keys(cert_env.("c")))}, "IO.puts(:reached)")

      assert status != 0 and not (out =~ "reached"), out

      stop!(d)
      stop!(c)
    end

    test "a release in embedded mode (RELEASE_MODE=embedded) starts distribution", %{
      app: app,
      cookie: cookie
    } do
      mix!(app, "prod", ["release", "--overwrite"])
      rel = Path.join(app, "_build/prod/rel/cluster_app")
      tmp = Peers.tmp_dir()
      e = release_node(rel, tmp, "e", cookie, %{"RELEASE_MODE" => "embedded"})
      start_daemon!(e)
      assert {:ok, _} = eventually_rpc(e, "IO.inspect(node())", &(&1 =~ e.name))
      stop!(e)
    end
  end

  # --- Mix --------------------------------------------------------------------------------

  defp mix!(dir, env, args) do
    {out, status} =
      System.cmd("mix", args,
        cd: dir,
        stderr_to_stdout: true,
        env: [{"MIX_ENV", env}, {"MIX_BUILD_PATH", nil}]
      )

    assert status == 0, "MIX_ENV=#{env} mix #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    out
  end

  defp quic_dist_vsn do
    {:ok, vsn} = :application.get_key(:quic_dist, :vsn)
    to_string(vsn)
  end

  defp timed(fun) do
    {us, result} = :timer.tc(fun)
    {Float.round(us / 1_000_000, 1), result}
  end

  # --- Releases ---------------------------------------------------------------------------

  defp release_node(rel, tmp, short, cookie, extra \\ %{}) do
    name = "#{Peers.unique_name("rel_" <> short)}@127.0.0.1"
    release_tmp = Path.join(tmp, "#{short}_tmp")
    File.mkdir_p!(release_tmp)

    env =
      Map.merge(
        %{
          "RELEASE_NODE" => name,
          "RELEASE_DISTRIBUTION" => "name",
          "RELEASE_COOKIE" => cookie,
          "RELEASE_TMP" => release_tmp,
          "ELIXIR_ERL_OPTIONS" => nil,
          "MIX_ENV" => nil
        },
        extra
      )

    %{bin: Path.join(rel, "bin/cluster_app"), name: name, env: env, tmp: release_tmp}
  end

  defp cmd(node, args, timeout \\ 60_000) do
    task =
      Task.async(fn ->
        System.cmd(node.bin, args, env: Enum.to_list(node.env), stderr_to_stdout: true)
      end)

    Task.await(task, timeout)
  end

  # Starts `daemon` with daemon_node's environment; waits until an rpc with rpc_node's
  # environment (the same node, maybe other variables) reaches it.
  defp start_daemon!(daemon_node, node \\ nil) do
    node = node || daemon_node
    {out, status} = cmd(daemon_node, ["daemon"])
    assert status == 0, "daemon #{node.name}: #{out}"
    # Stopped at the end even if the test fails half-way; killed (by OS pid) if stop fails.
    on_exit(fn -> cleanup_daemon(node) end)

    assert {:ok, _pid} =
             eventually_rpc(node, "IO.puts(System.pid())", &(&1 =~ ~r/^\d+\s*$/), 30_000)
  end

  defp rpc(node, expr), do: cmd(node, ["rpc", expr])

  defp rpc!(node, expr) do
    {out, status} = rpc(node, expr)
    assert status == 0, "rpc #{node.name} #{expr}: exit #{status}\n#{out}\n#{daemon_log(node)}"
    out
  end

  # Repeats the rpc until ok?.(output); {:ok, output} or {:error, last output and the log}.
  defp eventually_rpc(node, expr, ok?, timeout \\ 20_000) do
    key = {:last_rpc, node.name}

    result =
      Peers.eventually(
        fn ->
          {out, status} = rpc(node, expr)
          Process.put(key, out)
          status == 0 and ok?.(out) and out
        end,
        timeout,
        300
      )

    case result do
      out when is_binary(out) -> {:ok, out}
      _ -> {:error, "#{Process.get(key)}\n(log of #{node.name}:)\n#{daemon_log(node)}"}
    end
  end

  defp stop!(node) do
    {out, status} = cmd(node, ["stop"])
    assert status == 0, "stop #{node.name}: #{out}"
    # The VM and its run_erl are gone (everything that carries the node's name).
    short = short_name(node)

    assert Peers.eventually(fn -> Peers.os_pids_matching([short]) == [] end, 15_000, 100),
           "#{node.name} still running after stop: #{inspect(Peers.os_pids_matching([short]))}"
  end

  # After the test: `stop` if the node still runs, then kill (by OS pid) whatever is left of
  # it: the VM, run_erl, rpc/remote nodes (all carry the node's name, unique to this run).
  defp cleanup_daemon(node) do
    short = short_name(node)

    if Peers.os_pids_matching([short]) != [] do
      _ = cmd(node, ["stop"], 30_000)
      Peers.eventually(fn -> Peers.os_pids_matching([short]) == [] end, 10_000, 200)
      Peers.kill_matching([short])
    end
  end

  defp short_name(node), do: node.name |> String.split("@") |> hd()

  defp daemon_log(node) do
    node.tmp
    |> Path.join("log/erlang.log.*")
    |> Path.wildcard()
    |> Enum.map_join("\n", &File.read!/1)
  end

  defp write_sys_config!(source, target, certs, base) do
    {:ok, [config]} = :file.consult(String.to_charlist(source))

    quic_dist = [
      certfile: String.to_charlist(Path.join(certs, "#{base}.pem")),
      keyfile: String.to_charlist(Path.join(certs, "#{base}_key.pem")),
      cacertfile: String.to_charlist(Path.join(certs, "ca.pem"))
    ]

    File.write!(target, :io_lib.format(~c"~p.~n", [[{:quic_dist, quic_dist} | config]]))
  end

  # `bin/cluster_app remote` needs a terminal: run it under script(1), type an expression,
  # then leave with ^G q (which ends the remote shell, not the node).
  defp remote_shell(node, script, expr) do
    env =
      for {k, v} <- node.env,
          do: {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}

    port =
      Port.open({:spawn_executable, script}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:env, env},
        {:args, ["-qfec", "#{node.bin} remote", "/dev/null"]}
      ])

    short = short_name(node)

    on_exit(fn ->
      kill_port_process(port, "script")
      Peers.kill_matching(["rem-", short])
    end)

    await_output(port, ~r/iex\(#{Regex.escape(short)}@127\.0\.0\.1\)\d+>/, 30_000)
    Port.command(port, expr <> "\n")
    # The terminal echoes the typed line first; wait for the printed result.
    out = await_output(port, ~r/REMOTE_CHECK [^\n]*\n/, 15_000)
    Port.command(port, "\a")
    await_output(port, ~r/-->/, 10_000)
    Port.command(port, "q\n")
    assert_receive {^port, {:exit_status, _}}, 15_000
    out
  end

  # --- Ports ------------------------------------------------------------------------------

  defp open(exe, dir, env, args) do
    env = for {k, v} <- env, do: {String.to_charlist(k), String.to_charlist(v)}

    Port.open({:spawn_executable, exe}, [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      {:cd, dir},
      {:env, env},
      {:args, args}
    ])
  end

  # Collects the port's output until it matches `pattern`; returns everything read so far.
  defp await_output(port, pattern, timeout \\ 15_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    await_output(port, pattern, deadline, Process.get({:port_buffer, port}, ""))
  end

  defp await_output(port, pattern, deadline, acc) do
    if acc =~ pattern do
      Process.put({:port_buffer, port}, "")
      acc
    else
      left = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {^port, {:data, data}} ->
          await_output(port, pattern, deadline, acc <> data)

        {^port, {:exit_status, status}} ->
          flunk("process exited (#{status}) before printing #{inspect(pattern)}:\n#{acc}")
      after
        left -> flunk("no #{inspect(pattern)} within the time limit; output:\n#{acc}")
      end
    end
  end

  defp kill_port_process(port, name_part) do
    case Port.info(port, :os_pid) do
      {:os_pid, os_pid} ->
        case File.read("/proc/#{os_pid}/cmdline") do
          {:ok, cmdline} ->
            if String.contains?(cmdline, name_part) do
              System.cmd("kill", ["-9", to_string(os_pid)], stderr_to_stdout: true)
            end

          _ ->
            :ok
        end

        catch_port_close(port)

      _ ->
        :ok
    end
  end

  defp catch_port_close(port) do
    Port.close(port)
  catch
    _, _ -> :ok
  end
end
