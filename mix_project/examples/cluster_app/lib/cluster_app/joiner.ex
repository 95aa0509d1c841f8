defmodule ClusterApp.Joiner do
  @moduledoc """
  Connects to the nodes listed in `CLUSTER_APP_PEERS` (comma-separated node names) at start and
  whenever a connection is lost, every few seconds. A stand-in for libcluster & co: any way of
  calling `Node.connect/1` works the same over quic_dist.
  """
  use GenServer
  require Logger

  @retry_ms 2_000

  def peers_from_env do
    (System.get_env("CLUSTER_APP_PEERS") || "")
    |> String.split(",", trim: true)
    |> Enum.map(&(&1 |> String.trim() |> String.to_atom()))
  end

  def start_link(peers), do: GenServer.start_link(__MODULE__, peers, name: __MODULE__)

  @impl true
  def init(peers) do
    send(self(), :join)
    {:ok, peers}
  end

  @impl true
  def handle_info(:join, peers) do
    if Node.alive?() do
      for peer <- peers, peer != node(), peer not in Node.list() do
        case Node.connect(peer) do
          true ->
            Logger.info(
              "cluster_app: connected to #{peer} (over quic_dist: #{QuicDist.distributed_over_quic?()})"
            )

          _ ->
            :ok
        end
      end
    end

    if peers != [], do: Process.send_after(self(), :join, @retry_ms)
    {:noreply, peers}
  end
end
