variable "project_id" {
  description = "Project of the GKE cluster."
  type        = string
}

variable "cluster_name" {
  description = "Name of the existing GKE cluster (with Workload Identity enabled) that runs Kubeflow Pipelines."
  type        = string

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name is required: set gke_cluster_name when enable_gke_gpu_pool is true."
  }
}

variable "location" {
  description = "Zone or region of the cluster."
  type        = string
}

variable "node_locations" {
  description = "Zones for the GPU nodes (where the GPU type is offered); empty means the cluster's node locations."
  type        = list(string)
  default     = []
}

variable "name" {
  description = "Node pool name."
  type        = string
  default     = "chromify-gpu"
}

variable "machine_type" {
  description = "Machine type of the nodes; must fit gpu_type (g2-* for nvidia-l4, n1-* for nvidia-tesla-t4)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_type" {
  description = "Accelerator type, e.g. nvidia-l4, nvidia-tesla-t4, nvidia-a100-80gb."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per node."
  type        = number
  default     = 1

  validation {
    condition     = var.gpu_count >= 1
    error_message = "gpu_count must be at least 1."
  }
}

variable "gpu_driver_version" {
  description = "Driver GKE installs: LATEST (the chromify-gpu image's CUDA 13 torch needs a 580+ driver), DEFAULT, or INSTALLATION_DISABLED to manage drivers yourself."
  type        = string
  default     = "LATEST"

  validation {
    condition     = contains(["LATEST", "DEFAULT", "INSTALLATION_DISABLED"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be LATEST, DEFAULT or INSTALLATION_DISABLED."
  }
}

variable "max_nodes" {
  description = "Autoscaling ceiling per zone; the floor is 0 so an idle pool costs nothing."
  type        = number
  default     = 2
}

variable "spot" {
  description = "Use Spot VMs (reclaimable at any time; training must resume from its checkpoint)."
  type        = bool
  default     = true
}

variable "disk_size_gb" {
  description = "Boot disk size; the GPU image is several GB."
  type        = number
  default     = 100
}

variable "node_service_account" {
  description = "Email of the (non-default) service account the nodes run as."
  type        = string
}

variable "node_label_value" {
  description = "Value of the chromify-pool node label that GPU tasks select."
  type        = string
  default     = "gpu"
}
