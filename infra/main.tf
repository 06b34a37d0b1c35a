# Chromify on GCP: what `chromify pipeline submit --target vertex` needs (a bucket
# for pipeline roots and data, an image repository, two least-privilege service
# accounts) and, optionally, a GPU node pool for a Kubeflow Pipelines cluster.

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}

locals {
  services = concat(
    [
      "aiplatform.googleapis.com",
      "artifactregistry.googleapis.com",
      "cloudbuild.googleapis.com",
      "compute.googleapis.com",
      "iam.googleapis.com",
      "storage.googleapis.com",
    ],
    var.enable_gke_gpu_pool ? ["container.googleapis.com"] : [],
  )

  image_registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  pipeline_root  = "gs://${google_storage_bucket.pipelines.name}/pipeline-root"
}

resource "google_project_service" "apis" {
  for_each = toset(local.services)

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs: destroying Chromify must not switch them off.
  disable_on_destroy = false
}

# --- Storage: pipeline roots, DVC remote, models -----------------------------------------

resource "google_storage_bucket" "pipelines" {
  #checkov:skip=CKV_GCP_62:Access is recorded by Cloud Audit Logs (Data Access logs for storage.googleapis.com); a second bucket only for usage logs adds cost and another resource to secure.
  name          = var.bucket_name
  project       = var.project_id
  location      = upper(var.region)
  storage_class = "STANDARD"
  force_destroy = false

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  # Pipeline runs overwrite artifacts often: keep old versions long enough to recover, then drop them.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# --- Images ---------------------------------------------------------------------------

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Images hold code and public wheels only, no data or secrets; Google-managed encryption is sufficient and a CMEK would add a KMS key ring whose loss makes every image unreadable.
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  format        = "DOCKER"
  description   = "Chromify images (chromify-cpu, chromify-gpu, chromify-serve), tagged with the git commit."

  docker_config {
    immutable_tags = var.immutable_image_tags
  }

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "${var.untagged_image_retention_days * 86400}s"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "pushers" {
  for_each = toset(var.image_pusher_members)

  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}

# --- Service account that runs the pipeline (Vertex AI Pipelines / KFP pods) -----------------

resource "google_service_account" "pipelines" {
  project      = var.project_id
  account_id   = "chromify-pipelines"
  display_name = "Chromify pipelines"
  description  = "Runs the Chromify pipeline tasks: reads and writes the pipeline bucket, creates Vertex AI jobs and models."

  depends_on = [google_project_service.apis]
}

# Vertex AI has no resource-level IAM for pipeline jobs, custom jobs or models: project level is the narrowest.
resource "google_project_iam_member" "pipelines_aiplatform_user" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.pipelines.member
}

resource "google_storage_bucket_iam_member" "pipelines_objects" {
  bucket = google_storage_bucket.pipelines.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.pipelines.member
}

# objectAdmin has no storage.buckets.get, which Vertex AI's pipeline-root check and
# google-cloud-storage's get_bucket() call; this bucket-scoped role adds just that (and object listing).
resource "google_storage_bucket_iam_member" "pipelines_bucket_metadata" {
  bucket = google_storage_bucket.pipelines.name
  role   = "roles/storage.legacyBucketReader"
  member = google_service_account.pipelines.member
}

resource "google_artifact_registry_repository_iam_member" "pipelines_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.pipelines.member
}

# The pipeline job launches its custom (training) jobs as this same account.
resource "google_service_account_iam_member" "pipelines_act_as_self" {
  service_account_id = google_service_account.pipelines.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.pipelines.member
}

# --- Service account of the serving container ----------------------------------------------

resource "google_service_account" "serving" {
  project      = var.project_id
  account_id   = "chromify-serving"
  display_name = "Chromify serving"
  description  = "Identity of the chromify-serve container: reads models from the pipeline bucket, nothing else."

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "serving_objects" {
  bucket = google_storage_bucket.pipelines.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.serving.member
}

resource "google_artifact_registry_repository_iam_member" "serving_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.serving.member
}

# --- Optional: GPU node pool for Kubeflow Pipelines on an existing GKE cluster ---------------

resource "google_service_account" "gke_gpu_nodes" {
  count = var.enable_gke_gpu_pool ? 1 : 0

  project      = var.project_id
  account_id   = "chromify-gke-gpu"
  display_name = "Chromify GKE GPU nodes"
  description  = "Node identity of the Chromify GPU pool: logging, monitoring and image pulls only; pods use Workload Identity."

  depends_on = [google_project_service.apis]
}

# The predefined minimum for GKE nodes (log and metric writing), instead of the Compute default account.
resource "google_project_iam_member" "gke_gpu_nodes_default" {
  count = var.enable_gke_gpu_pool ? 1 : 0

  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = google_service_account.gke_gpu_nodes[0].member
}

resource "google_artifact_registry_repository_iam_member" "gke_gpu_nodes_reader" {
  count = var.enable_gke_gpu_pool ? 1 : 0

  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.gke_gpu_nodes[0].member
}

# KFP pods run as a Kubernetes service account; Workload Identity maps it onto chromify-pipelines.
resource "google_service_account_iam_member" "kfp_workload_identity" {
  count = var.enable_gke_gpu_pool ? 1 : 0

  service_account_id = google_service_account.pipelines.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.kubeflow_namespace}/${var.kubeflow_service_account}]"
}

module "gke_gpu_pool" {
  source = "./modules/gke_gpu_pool"
  count  = var.enable_gke_gpu_pool ? 1 : 0

  project_id           = var.project_id
  cluster_name         = var.gke_cluster_name
  location             = coalesce(var.gke_cluster_location, var.region)
  node_locations       = var.gpu_node_locations
  machine_type         = var.gpu_machine_type
  gpu_type             = var.gpu_type
  gpu_count            = var.gpu_count
  max_nodes            = var.gpu_pool_max_nodes
  spot                 = var.gpu_pool_spot
  node_service_account = google_service_account.gke_gpu_nodes[0].email

  depends_on = [google_project_service.apis, google_project_iam_member.gke_gpu_nodes_default]
}
