variable "project_id" {
  description = "GCP project that hosts the Chromify pipelines, images and data."
  type        = string
}

variable "region" {
  description = "Region for Vertex AI, the bucket and the Artifact Registry repository (keep them together: Vertex AI reads the pipeline root from this region)."
  type        = string
  default     = "us-central1"
}

variable "bucket_name" {
  description = "Globally unique name of the GCS bucket holding pipeline roots, DVC remote data and models."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 characters of lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit."
  }
}

variable "repository_id" {
  description = "Artifact Registry Docker repository for the chromify-cpu, chromify-gpu and chromify-serve images."
  type        = string
  default     = "chromify"
}

variable "immutable_image_tags" {
  description = "Refuse to move an existing image tag. Images are tagged with the git commit, so a tag must always mean the same image (KFP caches by image reference)."
  type        = bool
  default     = true
}

variable "untagged_image_retention_days" {
  description = "Days after which untagged (superseded) image versions are deleted from the repository."
  type        = number
  default     = 30

  validation {
    condition     = var.untagged_image_retention_days >= 1
    error_message = "untagged_image_retention_days must be at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a noncurrent (overwritten or deleted) object version is kept in the bucket before it is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "image_pusher_members" {
  description = "IAM members allowed to push images to the repository, e.g. [\"serviceAccount:PROJECT_NUMBER@cloudbuild.gserviceaccount.com\"]. Empty: manage pushers elsewhere."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Labels applied to every resource that supports them."
  type        = map(string)
  default = {
    app = "chromify"
  }
}

# --- Optional: a GPU node pool on an existing GKE cluster running Kubeflow Pipelines ---

variable "enable_gke_gpu_pool" {
  description = "Add a GPU node pool (and its node service account and Workload Identity binding) to an existing GKE cluster running Kubeflow Pipelines."
  type        = bool
  default     = false
}

variable "gke_cluster_name" {
  description = "Name of the existing GKE cluster; required when enable_gke_gpu_pool is true."
  type        = string
  default     = ""
}

variable "gke_cluster_location" {
  description = "Zone or region of the existing GKE cluster; empty means var.region."
  type        = string
  default     = ""
}

variable "gpu_type" {
  description = "GPU accelerator type for the GKE pool, e.g. nvidia-l4, nvidia-tesla-t4, nvidia-a100-80gb."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per node in the GKE pool."
  type        = number
  default     = 1
}

variable "gpu_machine_type" {
  description = "Machine type of the GKE GPU nodes; must be compatible with gpu_type (g2-* for L4)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_node_locations" {
  description = "Zones for the GPU nodes (where gpu_type is offered); empty means the cluster's default node locations."
  type        = list(string)
  default     = []
}

variable "gpu_pool_max_nodes" {
  description = "Autoscaling ceiling of the GPU pool, per zone."
  type        = number
  default     = 2
}

variable "gpu_pool_spot" {
  description = "Use Spot VMs for the GPU pool (cheaper, can be reclaimed: training must resume from its checkpoint)."
  type        = bool
  default     = true
}

variable "kubeflow_namespace" {
  description = "Kubernetes namespace where Kubeflow Pipelines runs its pods."
  type        = string
  default     = "kubeflow"
}

variable "kubeflow_service_account" {
  description = "Kubernetes service account of the pipeline pods, bound to chromify-pipelines through Workload Identity."
  type        = string
  default     = "pipeline-runner"
}
