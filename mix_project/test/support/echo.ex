defmodule QuicDistTest.Echo do
  @moduledoc "A GenServer started on a peer node; other nodes call it as `{QuicDistTest.Echo, node}`."
  use GenServer

  @doc "Starts the server unlinked (the caller is a short-lived :peer.call process)."
  def start do
    case GenServer.start(__MODULE__, 0, name: __MODULE__) do
      {:ok, pid} -> {:ok, pid}
      {:error, {:already_started, pid}} -> {:ok, pid}
    end
  end

  @impl true
  def init(count), do: {:ok, count}

  @impl true
  def handle_call({:echo, term}, {from, _}, count),
    do: {:reply, %{node: node(), from_node: node(from), echo: term, count: count + 1}, count + 1}
end
