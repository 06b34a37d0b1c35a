# A GPU node pool for the training step of the Kubeflow pipeline. It scales to zero
# when no training runs, and only pods that tolerate the GPU taint and select the
# chromify-pool label land on it.

resource "google_container_node_pool" "gpu" {
  project        = var.project_id
  name           = var.name
  cluster        = var.cluster_name
  location       = var.location
  node_locations = length(var.node_locations) > 0 ? var.node_locations : null

  initial_node_count = 0

  autoscaling {
    min_node_count = 0
    max_node_count = var.max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.machine_type
    image_type      = "COS_CONTAINERD"
    disk_type       = "pd-balanced"
    disk_size_gb    = var.disk_size_gb
    spot            = var.spot
    service_account = var.node_service_account
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count

      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    # What GPU tasks select (outputs.node_selector), besides GKE's own cloud.google.com/gke-accelerator.
    labels = {
      "chromify-pool" = var.node_label_value
    }

    # GKE adds this taint to GPU pools itself; declaring it keeps plans free of drift.
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    # The autoscaler owns the node count.
    ignore_changes = [initial_node_count]
  }
}
