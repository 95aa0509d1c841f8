defmodule ClusterApp do
  @moduledoc """
  Example application that forms a cluster over quic_dist. See the README of `mix_project/`.
  """

  @doc "Every node of the cluster, with the QUIC link this node has to it."
  def cluster do
    for node <- Node.list(), into: %{} do
      {node, QuicDist.info(node)}
    end
  end
end
