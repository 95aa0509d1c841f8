# Elixir nodes over QUIC, used the way the README tells users to start them:
#
#     iex    --erl "$(make -s print-erl-flags)" --name a@127.0.0.1 --cookie C
#     elixir --erl "$(make -s print-erl-flags)" --name b@127.0.0.1 --cookie C -e '...'
#
# This file is run by scripts/run-elixir-tests.sh with plain `elixir` (no Mix), and the test
# process is itself a QUIC-distributed node:
#
#     elixir --erl "$FLAGS" --name test@127.0.0.1 --cookie C tests/elixir/iex_quic_test.exs
#
# Every other node is a real OS process started through the `iex` or `elixir` executable. iex
# nodes are driven by typing into their standard input (a pipe from a port), exactly as a user
# types at the prompt; what they print is read back from their standard output. Synchronisation
# is by messages, monitors and markers printed by the nodes: no sleeps. Every node is stopped
# in an on_exit callback (System.stop, then SIGKILL if it lingers). If this VM dies instead, the
# `elixir` nodes exit when their stdin closes; iex does not always (after it has evaluated input
# and its stdout pipe is gone it can stay up), so every node's OS pid is also written to
# QUIC_DIST_TEST_PIDS, for the run script to kill what is left.
#
# Tests tagged :known_issue show carrier problems that are not fixed yet; they are excluded (and
# counted as skipped) unless QUIC_DIST_TEST_KNOWN_ISSUES=1.
#
# Environment: QUIC_DIST_ERL_FLAGS (the output of `make -s print-erl-flags`; computed with make
# when absent), QUIC_DIST_TEST_COUNTS (file that receives "PASSED FAILED SKIPPED"),
# QUIC_DIST_TEST_PIDS, QUIC_DIST_TEST_KNOWN_ISSUES, QUIC_DIST_TEST_TRACE (ExUnit trace mode),
# QUIC_DIST_TEST_VERBOSE (print every node's output and this node's nodeup/nodedown).

# The same counting formatter as the Mix suite's (writes "PASSED FAILED SKIPPED").
Code.require_file("../../mix_project/test/support/counts_formatter.ex", __DIR__)

known_issues? = System.get_env("QUIC_DIST_TEST_KNOWN_ISSUES") in ["1", "true"]

ExUnit.start(
  trace: System.get_env("QUIC_DIST_TEST_TRACE") in ["1", "true"],
  timeout: 60_000,
  exclude: if(known_issues?, do: [], else: [:known_issue]),
  formatters: [ExUnit.CLIFormatter, QuicDistTest.CountsFormatter]
)

# The modules below are loaded on the remote nodes with :code.load_binary/3 over rpc, so their
# object code is kept here (a module compiled from an .exs file has no .beam file to read).

{:module, _, counter_beam, _} =
  defmodule QuicDistTest.Counter do
    @moduledoc false
    # A GenServer that the tests start on remote nodes under a registered name.
    use GenServer

    def init(n), do: {:ok, n}

    def handle_call(:get, _from, n), do: {:reply, n, n}
    def handle_call({:add, k}, _from, n), do: {:reply, n + k, n + k}
    def handle_call(:whoami, {caller, _tag}, n), do: {:reply, {node(), self(), node(caller)}, n}
    def handle_call({:echo, term}, _from, n), do: {:reply, term, n}

    def handle_cast({:add, k}, n), do: {:noreply, n + k}
  end

{:module, _, remote_beam, _} =
  defmodule QuicDistTest.Remote do
    @moduledoc false
    # Funs for Node.spawn/2: a fun belongs to the module that defines it, which must be loaded
    # on the node that runs it.
    def reply_fun(parent, ref) do
      fn ->
        result = {Enum.sum(1..100), System.version(), :erlang.system_info(:otp_release)}
        send(parent, {ref, node(), self(), result})
      end
    end

    # Node.connect/1 from this node, result sent to parent.
    def connect_fun(parent, ref, other) do
      fn -> send(parent, {ref, node(), Node.connect(other)}) end
    end

    # Tells parent once this node is connected to `other` (global meshes nodes asynchronously:
    # :global.sync/0 returning does not mean the connections are up yet).
    def await_connected_fun(parent, ref, other, timeout) do
      fn ->
        :ok = :net_kernel.monitor_nodes(true)

        result =
          if other in Node.list() do
            :connected
          else
            receive do
              {:nodeup, ^other} -> :connected
            after
              timeout -> {:not_connected, Node.list()}
            end
          end

        send(parent, {ref, node(), result})
      end
    end

    # Tells parent once this node is not connected to `other` (at once if it is not).
    def await_disconnected_fun(parent, ref, other) do
      fn ->
        :ok = :net_kernel.monitor_nodes(true)
        send(parent, {ref, :subscribed, node()})

        if other in Node.list() do
          receive do
            {:nodedown, ^other} -> :ok
          end
        end

        send(parent, {ref, :disconnected, node()})
      end
    end

    # Waits until an exit signal ends it.
    def wait_fun do
      fn ->
        receive do
          :never -> :ok
        end
      end
    end

    # Links to target, tells parent, then waits until an exit signal ends it.
    def link_and_wait_fun(target, parent, ref) do
      fn ->
        Process.link(target)
        send(parent, {ref, :linked})

        receive do
          :never -> :ok
        end
      end
    end

    # Runs on a mesh node: tells parent when that node sees `watched` go down.
    def nodedown_watcher(parent, ref, watched) do
      fn ->
        Node.monitor(watched, true)
        send(parent, {ref, :watching, node()})

        receive do
          {:nodedown, ^watched} -> send(parent, {ref, :saw_nodedown, node()})
        end
      end
    end
  end

:persistent_term.put(
  {QuicDistTest, :modules},
  [{QuicDistTest.Counter, counter_beam}, {QuicDistTest.Remote, remote_beam}]
)

defmodule QuicDistTest.OsNode do
  @moduledoc false
  # One OS-process node started through the `iex` or `elixir` executable, owned by a port.
  # Its output is kept line by line; `expect/3` waits for a line matching a regex (each line
  # is consumed once, in order); `type/2` writes a line to its stdin.
  use GenServer

  @ready "QUIC_TEST_READY"

  def start(kind, name, cookie, flags, extra_erl \\ "") when kind in [:iex, :elixir] do
    GenServer.start(__MODULE__, {kind, name, cookie, flags, extra_erl})
  end

  @doc "Waits until the node printed its ready marker: distribution is up."
  def await_ready(pid, timeout \\ 30_000) do
    case expect(pid, ~r/#{@ready} (\S+)/, timeout) do
      {:ok, [_, name]} -> {:ok, String.to_atom(name)}
      other -> other
    end
  end

  def type(pid, line), do: GenServer.call(pid, {:type, line})

  def expect(pid, regex, timeout \\ 10_000) do
    GenServer.call(pid, {:expect, regex, timeout}, timeout + 5_000)
  end

  def await_exit(pid, timeout \\ 15_000) do
    GenServer.call(pid, {:await_exit, timeout}, timeout + 5_000)
  end

  def output(pid), do: GenServer.call(pid, :output)
  def os_pid(pid), do: GenServer.call(pid, :os_pid)

  @doc "Kills the OS process if it still runs and stops the owner."
  def stop(pid) do
    if Process.alive?(pid), do: GenServer.stop(pid, :normal, 20_000)
    :ok
  catch
    :exit, _ -> :ok
  end

  @impl true
  def init({kind, name, cookie, flags, extra_erl}) do
    Process.flag(:trap_exit, true)
    exe = System.find_executable(Atom.to_string(kind)) || raise "#{kind} not found in PATH"

    common =
      ["--erl", flags] ++
        if(extra_erl == "", do: [], else: ["--erl", extra_erl]) ++
        ["--name", name, "--cookie", cookie]

    marker = ~s|IO.puts("#{@ready} " <> Atom.to_string(node()))|

    args =
      case kind do
        # No user .iex.exs: the test must not depend on the home directory.
        :iex ->
          common ++ ["--dot-iex", ""]

        # Prints the marker, then lives until its stdin closes (or something stops it).
        :elixir ->
          common ++
            [
              "-e",
              marker <>
                "; Stream.repeatedly(fn -> IO.read(:stdio, :line) end)" <>
                " |> Enum.find(&(&1 == :eof)); System.halt(0)"
            ]
      end

    port =
      Port.open({:spawn_executable, exe}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        {:line, 65_536},
        args: args,
        env: [{~c"NO_COLOR", ~c"1"}]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    # For scripts/run-elixir-tests.sh: if this VM is killed, it kills what is listed here.
    case System.get_env("QUIC_DIST_TEST_PIDS") do
      file when is_binary(file) and file != "" ->
        File.write!(file, "#{os_pid} #{name}\n", [:append])

      _ ->
        :ok
    end

    # An iex node is made to print the marker the way a user would: by typing at its prompt.
    if kind == :iex, do: Port.command(port, marker <> "\n")

    {:ok,
     %{
       kind: kind,
       name: name,
       port: port,
       os_pid: os_pid,
       lines: :queue.new(),
       all: [],
       partial: "",
       exit_status: nil,
       expect: nil,
       exit_waiters: []
     }}
  end

  @impl true
  def handle_call({:type, line}, _from, %{exit_status: nil} = s) do
    Port.command(s.port, line <> "\n")
    {:reply, :ok, s}
  end

  def handle_call({:type, _line}, _from, s), do: {:reply, {:error, {:exited, s.exit_status}}, s}

  def handle_call({:expect, regex, timeout}, from, s) do
    case take_match(s.lines, regex) do
      {:ok, captures, rest} ->
        {:reply, {:ok, captures}, %{s | lines: rest}}

      {:none, rest} when s.exit_status != nil ->
        {:reply, {:error, {:exited, s.exit_status, tail(s)}}, %{s | lines: rest}}

      {:none, rest} ->
        timer = Process.send_after(self(), {:expect_timeout, from}, timeout)
        {:noreply, %{s | lines: rest, expect: {from, regex, timer}}}
    end
  end

  def handle_call({:await_exit, _timeout}, _from, %{exit_status: st} = s) when st != nil do
    {:reply, {:ok, st}, s}
  end

  def handle_call({:await_exit, timeout}, from, s) do
    Process.send_after(self(), {:exit_timeout, from}, timeout)
    {:noreply, %{s | exit_waiters: [from | s.exit_waiters]}}
  end

  def handle_call(:output, _from, s), do: {:reply, tail(s), s}
  def handle_call(:os_pid, _from, s), do: {:reply, s.os_pid, s}

  @impl true
  def handle_info({port, {:data, {:noeol, chunk}}}, %{port: port} = s) do
    {:noreply, %{s | partial: s.partial <> chunk}}
  end

  def handle_info({port, {:data, {:eol, chunk}}}, %{port: port} = s) do
    line = s.partial <> chunk

    if System.get_env("QUIC_DIST_TEST_VERBOSE") in ["1", "true"],
      do: IO.puts("[#{s.name}] #{line}")

    s = %{s | partial: "", all: [line | s.all], lines: :queue.in(line, s.lines)}
    {:noreply, check_expect(s)}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = s) do
    s = %{s | exit_status: status}
    Enum.each(s.exit_waiters, &GenServer.reply(&1, {:ok, status}))
    s = %{s | exit_waiters: []}

    s =
      case s.expect do
        nil ->
          s

        {from, _regex, timer} ->
          Process.cancel_timer(timer)
          GenServer.reply(from, {:error, {:exited, status, tail(s)}})
          %{s | expect: nil}
      end

    {:noreply, s}
  end

  def handle_info({:expect_timeout, from}, %{expect: {from, _regex, _timer}} = s) do
    GenServer.reply(from, {:error, {:timeout, tail(s)}})
    {:noreply, %{s | expect: nil}}
  end

  def handle_info({:exit_timeout, from}, s) do
    if from in s.exit_waiters, do: GenServer.reply(from, {:error, :timeout})
    {:noreply, %{s | exit_waiters: List.delete(s.exit_waiters, from)}}
  end

  def handle_info(_other, s), do: {:noreply, s}

  @impl true
  def terminate(_reason, %{exit_status: nil} = s) do
    # Still running. First a normal stop: the node closes its QUIC connections, so the other
    # nodes see nodedown at once (a killed node is only noticed by ticks, a minute later, and
    # would linger in every Node.list/0 of the mesh). Then SIGKILL if it is not gone in time,
    # and wait (bounded) for the port to report the exit: no OS process outlives the test.
    node = String.to_atom(s.name)
    if node in Node.list(), do: :erpc.cast(node, :init, :stop, [])

    with :timeout <- wait_exit(s.port, 5_000) do
      System.cmd("kill", ["-KILL", Integer.to_string(s.os_pid)], stderr_to_stdout: true)
      wait_exit(s.port, 10_000)
    end

    safe_close(s.port)
  end

  def terminate(_reason, s), do: safe_close(s.port)

  defp wait_exit(port, timeout) do
    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      timeout -> :timeout
    end
  end

  defp safe_close(port) do
    Port.close(port)
  rescue
    _ -> :ok
  end

  defp check_expect(%{expect: nil} = s), do: s

  defp check_expect(%{expect: {from, regex, timer}} = s) do
    case take_match(s.lines, regex) do
      {:ok, captures, rest} ->
        Process.cancel_timer(timer)
        GenServer.reply(from, {:ok, captures})
        %{s | lines: rest, expect: nil}

      {:none, rest} ->
        %{s | lines: rest}
    end
  end

  # Drops lines up to and including the first match; without a match every line is consumed.
  defp take_match(queue, regex) do
    case :queue.out(queue) do
      {:empty, q} ->
        {:none, q}

      {{:value, line}, rest} ->
        case Regex.run(regex, line) do
          nil -> take_match(rest, regex)
          captures -> {:ok, captures, rest}
        end
    end
  end

  defp tail(s) do
    s.all |> Enum.take(40) |> Enum.reverse() |> Enum.concat([s.partial]) |> Enum.join("\n")
  end
end

defmodule QuicDistTest.IexQuicTest do
  use ExUnit.Case, async: false

  alias QuicDistTest.{Counter, OsNode}

  @moduletag timeout: 60_000

  # ---------------------------------------------------------------------------------------------
  # Helpers
  # ---------------------------------------------------------------------------------------------

  defp erl_flags do
    case System.get_env("QUIC_DIST_ERL_FLAGS") do
      flags when is_binary(flags) and flags != "" ->
        flags

      _ ->
        root = Path.expand("../..", __DIR__)

        {out, 0} =
          System.cmd("make", ["-s", "--no-print-directory", "-C", root, "print-erl-flags"])

        out |> String.split("\n", trim: true) |> List.last()
    end
  end

  defp unique_name(base) do
    [_, host] = node() |> Atom.to_string() |> String.split("@")
    "#{base}_#{System.pid()}_#{System.unique_integer([:positive])}@#{host}"
  end

  # Starts OS-process nodes concurrently, waits until each printed its ready marker, registers
  # their cleanup. Returns [{node_name, os_node_pid}] in the order given.
  defp start_nodes(specs, extra_erl \\ "") do
    cookie = Atom.to_string(Node.get_cookie())
    flags = erl_flags()

    started =
      for {kind, base} <- specs do
        name = unique_name(base)
        {:ok, pid} = OsNode.start(kind, name, cookie, flags, extra_erl)
        ExUnit.Callbacks.on_exit(fn -> OsNode.stop(pid) end)
        {name, pid}
      end

    for {name, pid} <- started do
      case OsNode.await_ready(pid) do
        {:ok, node} ->
          assert Atom.to_string(node) == name
          {node, pid}

        {:error, reason} ->
          flunk("node #{name} did not start: #{inspect(reason, printable_limit: :infinity)}")
      end
    end
  end

  defp start_node(kind, base) do
    [{node, pid}] = start_nodes([{kind, base}])
    {node, pid}
  end

  defp load_test_modules(node) do
    for {mod, beam} <- :persistent_term.get({QuicDistTest, :modules}) do
      assert {:module, ^mod} =
               :rpc.call(node, :code, :load_binary, [mod, ~c"#{inspect(mod)}.exs", beam])
    end
  end

  # Types a line into an iex node and waits for a line of output matching regex.
  defp iex_eval(os_node, line, regex, timeout \\ 10_000) do
    :ok = OsNode.type(os_node, line)

    case OsNode.expect(os_node, regex, timeout) do
      {:ok, captures} ->
        captures

      {:error, reason} ->
        flunk("iex gave no #{inspect(regex)} after typing #{line}: #{inspect(reason)}")
    end
  end

  # Waits until global on every connected node has synchronised with every node it knows.
  defp settle_mesh do
    :ok = :global.sync()
    for {:ok, :ok} <- :erpc.multicall(Node.list(), :global, :sync, [], 20_000), do: :ok
    :ok
  end

  # Waits until each of `nodes` (which have the test modules loaded) is connected to `node`:
  # the full mesh that global builds, as over TCP.
  defp await_mesh(node, nodes) do
    ref = make_ref()

    for other <- nodes,
        do: Node.spawn(other, QuicDistTest.Remote.await_connected_fun(self(), ref, node, 15_000))

    for other <- nodes do
      assert_receive {^ref, ^other, result}, 20_000
      assert result == :connected, "#{other} never connected to #{node}: #{inspect(result)}"
    end

    :ok
  end

  # Before stopping `node`: watchers on each of `others` that report when they see it go down.
  defp watch_nodedown(node, others) do
    ref = make_ref()

    for other <- others do
      Node.spawn(other, QuicDistTest.Remote.nodedown_watcher(self(), ref, node))
      assert_receive {^ref, :watching, ^other}, 10_000
    end

    ref
  end

  # After stopping it: every watcher saw nodedown, and global everywhere has handled it (global
  # tells the other nodes which connections it lost; a new node joining before that is done
  # can be disconnected by "prevent overlapping partitions", over TCP as well).
  defp await_nodedown_everywhere(ref, others) do
    for other <- others, do: assert_receive({^ref, :saw_nodedown, ^other}, 15_000)
    for other <- others, do: :erpc.call(other, :sys, :get_state, [:global_name_server])
    _ = :sys.get_state(:global_name_server)
    :ok
  end

  # Receives {tag1, tag2, value} and returns value, or fails saying what did not happen.
  defp receive_or_flunk({tag1, tag2}, what, timeout \\ 15_000) do
    receive do
      {^tag1, ^tag2, value} -> value
    after
      timeout -> flunk("no answer within #{timeout} ms: #{what}")
    end
  end

  # A UDP port that was free a moment ago (the node binds it right after).
  defp free_udp_port do
    {:ok, socket} = :gen_udp.open(0)
    {:ok, port} = :inet.port(socket)
    :ok = :gen_udp.close(socket)
    port
  end

  defp connect!(node) do
    assert Node.connect(node) == true
    assert node in Node.list()
  end

  # ---------------------------------------------------------------------------------------------
  # Shared nodes: one iex node and one elixir node, connected, with the test modules loaded.
  # ---------------------------------------------------------------------------------------------

  setup_all do
    if node() == :nonode@nohost do
      raise "run this file on a distributed node: elixir --erl \"$FLAGS\" --name test@127.0.0.1 " <>
              "--cookie C #{__ENV__.file} (see scripts/run-elixir-tests.sh)"
    end

    # QUIC_DIST_TEST_VERBOSE=1: print every node's output and this node's nodeup/nodedown.
    if System.get_env("QUIC_DIST_TEST_VERBOSE") in ["1", "true"] do
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true, [:nodedown_reason])

        log = fn log ->
          receive do
            msg -> IO.puts("[#{node()}] #{Time.utc_now()} #{inspect(msg)}")
          end

          log.(log)
        end

        log.(log)
      end)
    end

    [{iex_node, iex_os}, {ex_node, ex_os}] = start_nodes([{:iex, "iex_a"}, {:elixir, "ex_b"}])

    for n <- [iex_node, ex_node] do
      connect!(n)
      load_test_modules(n)
    end

    # global connects the two to each other too (a full mesh, as with TCP); wait until it did.
    await_mesh(ex_node, [iex_node])
    settle_mesh()

    %{iex_node: iex_node, iex_os: iex_os, ex_node: ex_node, ex_os: ex_os}
  end

  # ---------------------------------------------------------------------------------------------
  # Tests
  # ---------------------------------------------------------------------------------------------

  test "this test node runs quic_dist" do
    assert {:ok, [[~c"quic"]]} = :init.get_argument(:proto_dist)
    assert Process.whereis(:net_kernel) != nil
    assert node() != :nonode@nohost
  end

  test "Node.connect/1 to a freshly started iex node is true, Node.list/0 shows it on both sides",
       ctx do
    {node, os} = start_node(:iex, "iex_fresh")

    refute node in Node.list()
    :ok = :net_kernel.monitor_nodes(true)
    on_exit(fn -> :net_kernel.monitor_nodes(false) end)

    assert Node.connect(node) == true
    assert_receive {:nodeup, ^node}, 10_000
    assert node in Node.list()
    assert node in Node.list(:connected)

    # The link is a quic_dist connection, not TCP.
    assert node in :quic_dist.connections()
    assert {:ok, info} = :net_kernel.node_info(node)
    assert {:net_address, _addr, _host, :quic, :inet} = Keyword.fetch!(info, :address)

    # The user at the iex prompt sees this node in Node.list() and runs quic_dist too.
    me = Atom.to_string(node())

    [_, listed] = iex_eval(os, ~s|IO.puts("NODES " <> inspect(Node.list()))|, ~r/NODES (\[.*\])/)

    assert listed =~ me

    [_, proto] =
      iex_eval(
        os,
        ~s|IO.puts("PROTO " <> inspect(:init.get_argument(:proto_dist)))|,
        ~r/PROTO (.*)$/
      )

    assert proto == ~s|{:ok, [['quic']]}|

    [_, conns] =
      iex_eval(os, ~s|IO.puts("CONNS " <> inspect(:quic_dist.connections()))|, ~r/CONNS (.*)$/)

    assert conns =~ me

    # global connects it to the other nodes as well, as over TCP.
    await_mesh(node, [ctx.iex_node, ctx.ex_node])
  end

  test "iex nodes started with another cookie join after Node.set_cookie/1 at their prompt, connecting and accepting" do
    other = "other_#{System.pid()}"

    [dialer, acceptor] =
      for base <- ["iex_dialer", "iex_acceptor"] do
        {:ok, os} = OsNode.start(:iex, unique_name(base), other, erl_flags())
        on_exit(fn -> OsNode.stop(os) end)
        os
      end

    [{dialer_node, dialer}, {acceptor_node, acceptor}] =
      for os <- [dialer, acceptor] do
        {:ok, node} = OsNode.await_ready(os)
        # Cookie mode: the other cookie's CA does not sign this node's certificate.
        assert Node.connect(node) == false
        {node, os}
      end

    set_cookie = ~s|IO.puts("SET " <> inspect(Node.set_cookie(#{inspect(Node.get_cookie())})))|

    # Connecting from the node whose cookie changed.
    iex_eval(dialer, set_cookie, ~r/SET true/)

    [_, connected] =
      iex_eval(
        dialer,
        ~s|IO.puts("CONNECT " <> inspect(Node.connect(#{inspect(node())})))|,
        ~r/CONNECT (\S+)/
      )

    assert connected == "true"
    assert dialer_node in Node.list()

    # Accepting on the node whose cookie changed.
    iex_eval(acceptor, set_cookie, ~r/SET true/)
    assert Node.connect(acceptor_node) == true
    assert :erpc.call(acceptor_node, Node, :self, []) == acceptor_node
  end

  test "Node.spawn/2 runs a function on the remote nodes and sends its result back", ctx do
    for node <- [ctx.iex_node, ctx.ex_node] do
      ref = make_ref()
      pid = Node.spawn(node, QuicDistTest.Remote.reply_fun(self(), ref))
      assert node(pid) == node
      assert_receive {^ref, ^node, ^pid, {5050, version, otp}}, 10_000
      assert version == System.version()
      assert otp == :erlang.system_info(:otp_release)
    end
  end

  test "a fun typed at the iex prompt runs on this node through Node.spawn/2", ctx do
    # The fun is created by the iex evaluator on the iex node and executed here.
    me = node()
    Process.register(self(), :quic_test_sink)

    [_, spawned_on] =
      iex_eval(
        ctx.iex_os,
        ~s|pid = Node.spawn(:"#{me}", fn -> send({:quic_test_sink, :"#{me}"}, {:from_iex_fun, node(), Enum.sum(1..10)}) end); IO.puts("SPAWNED " <> Atom.to_string(node(pid)))|,
        ~r/SPAWNED (\S+)/
      )

    assert spawned_on == Atom.to_string(me)
    assert_receive {:from_iex_fun, ^me, 55}, 10_000

    # And back: the fun sends to the iex shell process, which prints what it got.
    [_, ran_on, sum] =
      iex_eval(
        ctx.iex_os,
        ~s|shell = self(); Node.spawn(:"#{me}", fn -> send(shell, {:ran_on, node(), Enum.sum(1..100)}) end); receive do {:ran_on, n, s} -> IO.puts("RAN_ON \#{n} \#{s}") after 10_000 -> IO.puts("RAN_ON timeout 0") end|,
        ~r/RAN_ON (\S+) (\d+)/,
        15_000
      )

    assert ran_on == Atom.to_string(me)
    assert sum == "5050"
  end

  test ":rpc.call/4 to the iex node and the elixir node", ctx do
    %{iex_node: a, ex_node: b} = ctx
    assert :rpc.call(a, :erlang, :node, []) == a
    assert :rpc.call(b, :erlang, :node, []) == b
    assert :rpc.call(a, System, :version, []) == System.version()
    assert :rpc.call(b, Enum, :sum, [[1, 2, 3]]) == 6
    assert :rpc.call(a, String, :upcase, ["quic"]) == "QUIC"

    # An exception on the remote side comes back as {:badrpc, {:EXIT, ...}}.
    assert {:badrpc, {:EXIT, {:badarg, _stack}}} =
             :rpc.call(b, String, :to_integer, ["not a number"])

    assert {:badrpc, {:EXIT, {%RuntimeError{message: "boom"}, _}}} =
             :rpc.call(a, :erlang, :error, [RuntimeError.exception("boom")])

    # Terms of every kind, and a message larger than a fragment (OTP fragments at 64 KiB).
    term = %{list: Enum.to_list(1..1000), tuple: {:a, "b", 3.0, self(), make_ref()}, atom: :quic}
    assert :rpc.call(a, Function, :identity, [term]) == term

    big = :crypto.strong_rand_bytes(8 * 1024 * 1024)
    assert :rpc.call(b, Function, :identity, [big]) == big
    assert :rpc.call(a, :erlang, :md5, [big]) == :erlang.md5(big)

    # Several calls at once, from several processes.
    tasks =
      for i <- 1..50,
          do: Task.async(fn -> :rpc.call(Enum.at([a, b], rem(i, 2)), Kernel, :*, [i, i]) end)

    assert Task.await_many(tasks, 20_000) == for(i <- 1..50, do: i * i)

    assert :erpc.multicall([a, b], :erlang, :node, [], 10_000) == [{:ok, a}, {:ok, b}]
  end

  test "GenServer.call/2 to GenServers registered on the other nodes", ctx do
    %{iex_node: a, ex_node: b, iex_os: iex_os} = ctx

    # Started on the elixir node over rpc (not linked: the rpc process exits).
    assert {:ok, pid_b} = :rpc.call(b, GenServer, :start, [Counter, 0, [name: :quic_counter_b]])
    on_exit(fn -> :rpc.call(b, GenServer, :stop, [pid_b]) end)
    assert node(pid_b) == b

    assert GenServer.call({:quic_counter_b, b}, {:add, 5}) == 5
    assert GenServer.call({:quic_counter_b, b}, :whoami) == {b, pid_b, node()}

    # Casts and calls stay in order on one connection.
    for _ <- 1..1000, do: GenServer.cast({:quic_counter_b, b}, {:add, 1})
    assert GenServer.call({:quic_counter_b, b}, :get) == 1005

    big = {:payload, :crypto.strong_rand_bytes(2 * 1024 * 1024)}
    assert GenServer.call({:quic_counter_b, b}, {:echo, big}, 20_000) == big

    # Started by the user at the iex prompt.
    iex_eval(
      iex_os,
      ~s|{:ok, _} = GenServer.start(QuicDistTest.Counter, 100, name: :quic_counter_a); IO.puts("COUNTER_STARTED")|,
      ~r/COUNTER_STARTED/
    )

    on_exit(fn -> :rpc.call(a, GenServer, :stop, [:quic_counter_a]) end)
    assert GenServer.call({:quic_counter_a, a}, :get) == 100
    assert GenServer.call({:quic_counter_a, a}, {:add, 1}) == 101
    assert {^a, pid_a, me} = GenServer.call({:quic_counter_a, a}, :whoami)
    assert me == node()
    assert node(pid_a) == a

    # From the iex prompt to the GenServer on the elixir node: iex connects to it (or is
    # already connected through the mesh) over QUIC too.
    [_, value] =
      iex_eval(
        iex_os,
        ~s|IO.puts("B_COUNTER " <> inspect(GenServer.call({:quic_counter_b, :"#{b}"}, :get)))|,
        ~r/B_COUNTER (\d+)/
      )

    assert value == "1005"
    assert b in :rpc.call(a, :quic_dist, :connections, [])

    # A call to a name nobody registered exits with :noproc, as over TCP.
    assert {:noproc, _} = catch_exit(GenServer.call({:no_such_server, b}, :get, 5_000))
  end

  test ":quic_dist.info/1 returns TLS details of the link", ctx do
    for node <- [ctx.iex_node, ctx.ex_node] do
      assert {:ok, info} = :quic_dist.info(node)
      assert info.node == node
      assert "TLS13_" <> _ = info.cipher_suite
      assert info.tls_version == "TLSv1.3"
      assert %{subject: subject, issuer: issuer} = info.peer_certificate
      assert is_binary(subject) and subject != ""
      assert is_binary(issuer) and issuer != ""
      assert is_integer(info.rtt_us)
      assert {{127, 0, 0, 1}, port} = info.remote
      assert is_integer(port) and port > 0
    end

    assert Map.has_key?(:quic_dist.info(), ctx.iex_node)
    assert Map.has_key?(:quic_dist.info(), ctx.ex_node)
    assert :quic_dist.info(:"nobody@127.0.0.1") == {:error, :not_connected}

    # The same from the iex prompt, about the link to this node.
    me = node()

    [_, cipher, version, subject] =
      iex_eval(
        ctx.iex_os,
        ~s|{:ok, i} = :quic_dist.info(:"#{me}"); IO.puts("INFO \#{i.cipher_suite} \#{i.tls_version} \#{i.peer_certificate.subject}")|,
        ~r/INFO (TLS13_\S+) (TLSv1\.3) (.+)$/
      )

    {:ok, mine} = :quic_dist.info(ctx.iex_node)
    assert cipher == mine.cipher_suite
    assert version == "TLSv1.3"
    assert subject != ""
  end

  test "Node.monitor/2 gives {:nodedown, node} when an iex node runs System.stop()", ctx do
    {node, os} = start_node(:iex, "iex_stop")
    others = [ctx.iex_node, ctx.ex_node]
    connect!(node)
    await_mesh(node, others)
    ref = watch_nodedown(node, others)
    assert Node.monitor(node, true) == true

    t0 = System.monotonic_time(:millisecond)
    :ok = OsNode.type(os, "System.stop()")
    assert_receive {:nodedown, ^node}, 15_000
    elapsed = System.monotonic_time(:millisecond) - t0
    await_nodedown_everywhere(ref, others)

    refute node in Node.list()
    assert :quic_dist.info(node) == {:error, :not_connected}
    assert {:ok, 0} = OsNode.await_exit(os)
    # A node that stops normally closes its connections: nodedown does not wait for ticks.
    assert elapsed < 10_000, "nodedown took #{elapsed} ms"
  end

  test "an elixir node stopped with System.stop over rpc goes down everywhere, then restarts under its name and reconnects",
       ctx do
    {node, os} = start_node(:elixir, "ex_restart")
    others = [ctx.iex_node, ctx.ex_node]
    connect!(node)

    # Every node of the mesh gets connected to it, and must see it go down.
    await_mesh(node, others)
    settle_mesh()

    ref = watch_nodedown(node, others)
    assert Node.monitor(node, true) == true
    {:ok, info1} = :quic_dist.info(node)

    :ok = :erpc.cast(node, System, :stop, [])
    assert_receive {:nodedown, ^node}, 15_000
    await_nodedown_everywhere(ref, others)
    refute node in Node.list()
    assert {:ok, 0} = OsNode.await_exit(os)

    # Same name, new OS process (new UDP port, new creation): connect again.
    cookie = Atom.to_string(Node.get_cookie())
    {:ok, os2} = OsNode.start(:elixir, Atom.to_string(node), cookie, erl_flags())
    on_exit(fn -> OsNode.stop(os2) end)
    assert {:ok, ^node} = OsNode.await_ready(os2)

    connect!(node)
    assert :rpc.call(node, :os, :getpid, []) == Integer.to_charlist(OsNode.os_pid(os2))
    {:ok, info2} = :quic_dist.info(node)
    assert info2.remote != info1.remote
    await_mesh(node, others)
  end

  test "an elixir node restarted in place with System.restart (what a release's bin/app restart calls) comes back over QUIC on its fixed UDP port",
       ctx do
    # init:restart/0 stops every application and unloads every module but the preloaded ones,
    # then boots again in the same OS process: the NIF library is loaded a second time there.
    port = free_udp_port()

    [{node, os}] = start_nodes([{:elixir, "ex_inplace"}], "-quic_dist_opt port #{port}")

    connect!(node)
    assert {:ok, %{remote: {_, ^port}}} = :quic_dist.info(node)
    assert Node.monitor(node, true) == true

    :ok = :erpc.cast(node, System, :restart, [])
    assert_receive {:nodedown, ^node}, 15_000

    # The boot runs the -e script again, which prints the ready marker again.
    assert {:ok, ^node} = OsNode.await_ready(os)
    connect!(node)
    assert :rpc.call(node, :os, :getpid, []) == Integer.to_charlist(OsNode.os_pid(os))
    assert {:ok, %{remote: {_, ^port}}} = :quic_dist.info(node)

    # The data path works both ways after the second load: a 1 MiB binary there and back.
    blob = :crypto.strong_rand_bytes(1024 * 1024)
    assert :rpc.call(node, :erlang, :binary_part, [blob, 0, byte_size(blob)]) == blob
    await_mesh(node, [ctx.iex_node, ctx.ex_node])
  end

  test "two nodes that connect to each other at the same moment both get true from Node.connect/1" do
    # This is what global does whenever a node joins a cluster of two or more: it tells the
    # others about the newcomer and the newcomer about them, and both sides dial at once. One
    # handshake wins; the loser is told `nok` and must wait for the winner's connection, so
    # both calls return true (they always do over TCP). If the loser gets false, OTP 25's
    # global (prevent_overlapping_partitions) treats it as a lost connection and disconnects
    # healthy nodes all over the cluster.
    # The two nodes run with -connect_all false so that this test's disconnects stay between them.
    [{b, b_os}, {c, c_os}] =
      start_nodes([{:elixir, "ex_sim_b"}, {:elixir, "ex_sim_c"}], "-connect_all false")

    for n <- [b, c] do
      connect!(n)
      load_test_modules(n)
    end

    results =
      for i <- 1..25 do
        ref = make_ref()
        Node.spawn(b, QuicDistTest.Remote.connect_fun(self(), ref, c))
        Node.spawn(c, QuicDistTest.Remote.connect_fun(self(), ref, b))
        from_b = receive_or_flunk({ref, b}, "round #{i}: Node.connect/1 on #{b}")
        from_c = receive_or_flunk({ref, c}, "round #{i}: Node.connect/1 on #{c}")

        separate(b, c, i, 5)
        {i, from_b, from_c}
      end

    failed =
      for {i, from_b, from_c} <- results,
          {from_b, from_c} != {true, true},
          do: {i, from_b, from_c}

    assert failed == [],
           "Node.connect/1 returned false in rounds (round, b->c, c->b): #{inspect(failed)}"

    # Losing a simultaneous connect and disconnecting are normal: no crash, no warning. (The end
    # of a stream read together with its last data was once taken for a broken peer.)
    for os <- [b_os, c_os] do
      out = OsNode.output(os)
      refute out =~ ~r/Error in process|peer broke the protocol|refused incoming connection/, out
    end
  end

  # Disconnects b from c and waits until c saw it, so that the next round's connects are real.
  # OTP 25's rpc answers a features request sent at nodeup; an answer sent just after the
  # disconnect auto-connects the pair again (over TCP too): then disconnect again.
  defp separate(b, c, i, attempts) do
    ref = make_ref()
    Node.spawn(c, QuicDistTest.Remote.await_disconnected_fun(self(), ref, b))
    ^c = receive_or_flunk({ref, :subscribed}, "round #{i}: watcher on #{c}")
    :erpc.call(b, Node, :disconnect, [c])
    ^c = receive_or_flunk({ref, :disconnected}, "round #{i}: #{c} to see the disconnect by #{b}")

    cond do
      c not in :erpc.call(b, Node, :list, []) -> :ok
      attempts > 1 -> separate(b, c, i, attempts - 1)
      true -> flunk("round #{i}: #{b} and #{c} kept reconnecting after Node.disconnect/1")
    end
  end

  test "a node that halts (System.halt, or the end of an `elixir -e` script) is reported down promptly, as over TCP" do
    # Over TCP the OS closes the halted node's sockets and nodedown comes within milliseconds.
    # erlang:halt/1 does not call the carrier's close/1 and a closed UDP socket sends nothing:
    # the NIF's exit hook closes the QUIC connections so peers need not wait for net_ticktime.
    {node, os} = start_node(:elixir, "ex_halt")
    connect!(node)
    assert Node.monitor(node, true) == true
    on_exit(fn -> Node.disconnect(node) end)

    :ok = :erpc.cast(node, System, :halt, [])
    assert {:ok, 0} = OsNode.await_exit(os)
    assert_receive {:nodedown, ^node}, 10_000
  end

  test "three nodes form a mesh: the iex node reaches the elixir node and links work across it",
       ctx do
    %{iex_node: a, ex_node: b} = ctx
    await_mesh(b, [a])

    # A process on the iex node, monitored from here, and a process on the elixir node that
    # links to it. Killing the second propagates the exit over the a-b connection (link, then
    # exit signal: one sender, one receiver, so in order) and the first dies with :killed.
    ref = make_ref()

    {waiter, mon} =
      :erlang.spawn_monitor(a, :erlang, :apply, [QuicDistTest.Remote.wait_fun(), []])

    assert node(waiter) == a
    linker = Node.spawn(b, QuicDistTest.Remote.link_and_wait_fun(waiter, self(), ref))
    assert_receive {^ref, :linked}, 10_000

    Process.exit(linker, :kill)
    assert_receive {:DOWN, ^mon, :process, ^waiter, reason}, 10_000
    assert reason == :killed
    assert b in :rpc.call(a, Node, :list, [])
  end
end
