output "node_pool_name" {
  description = "Name of the GPU node pool."
  value       = google_container_node_pool.gpu.name
}

output "node_selector" {
  description = "Node selector for GPU tasks (kfp.kubernetes.add_node_selector)."
  value       = { "chromify-pool" = var.node_label_value }
}

output "toleration" {
  description = "Toleration GPU tasks need for the pool's taint (kfp.kubernetes.add_toleration)."
  value = {
    key      = "nvidia.com/gpu"
    operator = "Equal"
    value    = "present"
    effect   = "NoSchedule"
  }
}
