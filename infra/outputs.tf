# Everything `chromify pipeline submit --target vertex` and the pipeline's image
# references need; `terraform output -raw pipeline_submit_command` prints it whole.

output "project_id" {
  description = "Project the pipeline runs in (--project)."
  value       = var.project_id
}

output "region" {
  description = "Vertex AI region (--region)."
  value       = var.region
}

output "bucket_name" {
  description = "Bucket for pipeline roots, the DVC remote and models."
  value       = google_storage_bucket.pipelines.name
}

output "pipeline_root" {
  description = "Vertex AI / KFP pipeline root (--pipeline-root)."
  value       = local.pipeline_root
}

output "image_registry" {
  description = "Registry prefix of the Chromify images; append /chromify-<cpu|gpu|serve>:<git commit>."
  value       = local.image_registry
}

output "repository_id" {
  description = "Artifact Registry repository of the images (cloudbuild.yaml's _REPOSITORY)."
  value       = google_artifact_registry_repository.images.repository_id
}

output "images" {
  description = "Untagged image names by role; cloudbuild.yaml tags them with the commit SHA."
  value = {
    cpu   = "${local.image_registry}/chromify-cpu"
    gpu   = "${local.image_registry}/chromify-gpu"
    serve = "${local.image_registry}/chromify-serve"
  }
}

output "pipelines_service_account_email" {
  description = "Service account the pipeline runs as (--service-account)."
  value       = google_service_account.pipelines.email
}

output "serving_service_account_email" {
  description = "Service account for the deployed chromify-serve endpoint."
  value       = google_service_account.serving.email
}

output "pipeline_submit_command" {
  description = "The submit command with every cloud argument filled in."
  value = join(" ", [
    "chromify pipeline submit --target vertex",
    "--project ${var.project_id}",
    "--region ${var.region}",
    "--pipeline-root ${local.pipeline_root}",
    "--service-account ${google_service_account.pipelines.email}",
  ])
}

output "gke_gpu_pool" {
  description = "Node pool name, node selector and toleration for GPU tasks on the Kubeflow cluster; null when the pool is disabled."
  value = var.enable_gke_gpu_pool ? {
    node_pool_name = module.gke_gpu_pool[0].node_pool_name
    node_selector  = module.gke_gpu_pool[0].node_selector
    toleration     = module.gke_gpu_pool[0].toleration
  } : null
}
