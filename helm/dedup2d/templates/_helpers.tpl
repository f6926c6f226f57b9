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
