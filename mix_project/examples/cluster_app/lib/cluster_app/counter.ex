defmodule ClusterApp.Counter do
  @moduledoc """
  A small GenServer registered as `ClusterApp.Counter` on every node: other nodes reach it with
  `GenServer.call({ClusterApp.Counter, node}, ...)` over quic_dist.
  """
  use GenServer

  def start_link(_opts), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)

  @doc "Increments the counter on `node` and returns `{node, new_value}`."
  def bump(node \\ node()), do: GenServer.call({__MODULE__, node}, :bump)

  @doc "The counter's value on `node`."
  def value(node \\ node()), do: GenServer.call({__MODULE__, node}, :value)

  @doc "Asks `node` which node called and how the link looks from there."
  def whoami(node), do: GenServer.call({__MODULE__, node}, :whoami)

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call(:bump, _from, count), do: {:reply, {node(), count + 1}, count + 1}
  def handle_call(:value, _from, count), do: {:reply, count, count}

  def handle_call(:whoami, {pid, _}, count) do
    caller = node(pid)
    {:reply, %{me: node(), caller: caller, link: link(caller)}, count}
  end

  defp link(caller) do
    case QuicDist.info(caller) do
      {:ok, info} -> Map.take(info, [:mode, :tls_version, :cipher_suite, :rtt_us])
      {:error, reason} -> reason
    end
  end
end
