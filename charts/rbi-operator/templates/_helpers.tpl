{{/* Names and labels shared by every template. */}}

{{- define "rbi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rbi.fullname" -}}
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

{{- define "rbi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rbi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rbi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rbi.labels" -}}
helm.sh/chart: {{ include "rbi.chart" . }}
{{ include "rbi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rbi
{{- end }}

{{- define "rbi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rbi.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace watched in one-namespace mode. */}}
{{- define "rbi.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace }}
{{- end }}

{{/* repository[:tag][@digest], the tag defaulting to the chart's appVersion. */}}
{{- define "rbi.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "rbi.storeClaim" -}}
{{- default (printf "%s-store" (include "rbi.fullname" .)) .Values.store.persistence.existingClaim }}
{{- end }}

{{- define "rbi.datasetsClaim" -}}
{{- default (printf "%s-datasets" (include "rbi.fullname" .)) .Values.datasets.persistence.existingClaim }}
{{- end }}

{{- define "rbi.metricsServiceName" -}}
{{- printf "%s-metrics" (include "rbi.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
