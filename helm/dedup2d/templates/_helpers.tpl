{{/* Chart name, overridable. */}}
{{- define "dedup2d.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<name>, or the release name if it already contains the chart name. */}}
{{- define "dedup2d.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the worker and gc objects: <fullname>-worker, <fullname>-gc. */}}
{{- define "dedup2d.workerName" -}}
{{- printf "%s-worker" (include "dedup2d.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "dedup2d.gcName" -}}
{{- printf "%s-gc" (include "dedup2d.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}

{{- define "dedup2d.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dedup2d.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dedup2d.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dedup2d.labels" -}}
helm.sh/chart: {{ include "dedup2d.chart" . }}
{{ include "dedup2d.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dedup2d.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" in distributed mode (Redis queue, API and workers apart), "" in embedded mode. */}}
{{- define "dedup2d.distributed" -}}
{{- if eq .Values.mode "distributed" }}true{{ end }}
{{- end }}

{{/* "true" when the data dir is a PVC: embedded mode, or distributed with local storage. */}}
{{- define "dedup2d.usesClaim" -}}
{{- if and .Values.persistence.enabled (or (not (include "dedup2d.distributed" .)) (eq .Values.storage.type "local")) }}true{{ end }}
{{- end }}

{{/* Refuses values that would install something that cannot work. Included by the ConfigMap,
which every mode renders. */}}
{{- define "dedup2d.validate" -}}
{{- if not (has .Values.mode (list "embedded" "distributed")) }}
{{- fail (printf "mode must be embedded or distributed, not %q" .Values.mode) }}
{{- end }}
{{- if not (has .Values.storage.type (list "local" "s3")) }}
{{- fail (printf "storage.type must be local or s3, not %q" .Values.storage.type) }}
{{- end }}
{{- if hasKey .Values "resources" }}
{{- fail "resources moved: set api.resources, worker.resources and gc.resources" }}
{{- end }}
{{- if and (eq .Values.storage.type "s3") (not .Values.storage.s3.bucket) }}
{{- fail "storage.type s3 needs storage.s3.bucket" }}
{{- end }}
{{- $rwx := or .Values.persistence.existingClaim (has "ReadWriteMany" .Values.persistence.accessModes) }}
{{- if include "dedup2d.distributed" . }}
{{- if and (not .Values.existingSecret) (not .Values.redis.url) }}
{{- fail "mode distributed needs Redis: set redis.url (e.g. redis://:password@redis:6379/0), or existingSecret with a DEDUP2D_REDIS_URL key" }}
{{- end }}
{{- if eq .Values.storage.type "local" }}
{{- if not .Values.persistence.enabled }}
{{- fail "mode distributed with storage.type local shares the uploads on a volume: set persistence.enabled (ReadWriteMany), or use storage.type s3" }}
{{- end }}
{{- if not $rwx }}
{{- fail "mode distributed with storage.type local: API, worker and gc pods all mount the data volume, so persistence.accessModes must include ReadWriteMany (or use storage.type s3)" }}
{{- end }}
{{- end }}
{{- else }}
{{- if .Values.api.autoscaling.enabled }}
{{- fail "mode embedded runs exactly one API pod (one process owns the data dir): api.autoscaling needs mode distributed" }}
{{- end }}
{{- if .Values.gc.enabled }}
{{- fail "gc in mode embedded would open the serve pod's SQLite database from a second pod, which SQLite (WAL) does not support across hosts. Set gc.enabled=false and run `kubectl exec deploy/<release> -- dedup2d gc --execute` (see NOTES), or use mode distributed" }}
{{- end }}
{{- end }}
{{- range $key := list "DEDUP2D_LISTEN" "DEDUP2D_DATA_DIR" "DEDUP2D_API_KEYS" "API_KEYS" "API_KEY" "DEDUP2D_ASYNC_BACKEND" "DEDUP2D_WORKER_METRICS_LISTEN" "DEDUP2D_REDIS_URL" "REDIS_URL" "DEDUP2D_FILE_STORAGE" "DEDUP2D_S3_BUCKET" "DEDUP2D_S3_ENDPOINT" "DEDUP2D_S3_REGION" "DEDUP2D_S3_ACCESS_KEY" "DEDUP2D_S3_SECRET_KEY" "DEDUP2D_S3_SESSION_TOKEN" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" "DEDUP2D_CALLBACK_HMAC_SECRET" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart (from mode, storage, redis, the Secret, or the fixed ports and data dir); remove it from config" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret holding DEDUP2D_API_KEYS, and the key in it. Fails without keys:
dedup2d refuses to listen on the pod network without them. */}}
{{- define "dedup2d.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.apiKeys }}
{{- include "dedup2d.fullname" . }}
{{- else }}
{{- fail "dedup2d needs API keys: set apiKeys (e.g. --set 'apiKeys={key1}') or existingSecret. Without keys it refuses to listen on a non-loopback address." }}
{{- end }}
{{- end }}

{{- define "dedup2d.secretKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKey }}{{ else }}DEDUP2D_API_KEYS{{ end }}
{{- end }}

{{- define "dedup2d.claimName" -}}
{{- default (include "dedup2d.fullname" .) .Values.persistence.existingClaim }}
{{- end }}

{{- define "dedup2d.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dedup2d.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* One optional env entry from the Secret: (list $ "ENV_NAME" $valueWhenChartOwnsTheSecret).
With existingSecret the key is read when present; with the chart's Secret only when the value is set. */}}
{{- define "dedup2d.optionalSecretEnv" -}}
{{- $ := index . 0 }}{{ $name := index . 1 }}{{ $value := index . 2 }}
{{- if or $.Values.existingSecret $value }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "dedup2d.secretName" $ }}
      key: {{ $name }}
      {{- if $.Values.existingSecret }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* Secret-backed environment shared by serve, work and gc (not the API keys: only serve needs them). */}}
{{- define "dedup2d.secretEnv" -}}
{{- if include "dedup2d.distributed" . }}
- name: DEDUP2D_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "dedup2d.secretName" . }}
      key: {{ if .Values.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}DEDUP2D_REDIS_URL{{ end }}
{{- end }}
{{- include "dedup2d.optionalSecretEnv" (list . "DEDUP2D_CALLBACK_HMAC_SECRET" .Values.callbackHmacSecret) }}
{{- if eq .Values.storage.type "s3" }}
{{- include "dedup2d.optionalSecretEnv" (list . "DEDUP2D_S3_ACCESS_KEY" .Values.storage.s3.accessKey) }}
{{- include "dedup2d.optionalSecretEnv" (list . "DEDUP2D_S3_SECRET_KEY" .Values.storage.s3.secretKey) }}
{{- include "dedup2d.optionalSecretEnv" (list . "DEDUP2D_S3_SESSION_TOKEN" "") }}
{{- end }}
{{- end }}

{{/* Pod annotations: restart on ConfigMap/Secret changes, plus the user's. */}}
{{- define "dedup2d.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every pod: no API token, non-root, seccomp, scheduling. */}}
{{- define "dedup2d.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "dedup2d.serviceAccountName" . }}
# dedup2d does not talk to the Kubernetes API.
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container security context: read-only root, no privileges. */}}
{{- define "dedup2d.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The data dir and /tmp: the only writable places (the root filesystem is read-only). */}}
{{- define "dedup2d.volumeMounts" -}}
- name: data
  mountPath: /var/lib/dedup2d/data
# SQLite and the upload path may spill temporary files here.
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "dedup2d.volumes" -}}
- name: data
  {{- if include "dedup2d.usesClaim" . }}
  persistentVolumeClaim:
    claimName: {{ include "dedup2d.claimName" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- end }}
