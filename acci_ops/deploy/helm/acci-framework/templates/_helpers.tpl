{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "acci-framework.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. A release called "acci-framework" (the guide's `helm install acci-framework ...`)
gives objects named plain "acci-framework", matching the guide's kubectl commands.
*/}}
{{- define "acci-framework.fullname" -}}
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

{{- define "acci-framework.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. `app` is kept because the guide's NetworkPolicy and kubectl commands select on it. */}}
{{- define "acci-framework.selectorLabels" -}}
app: {{ include "acci-framework.name" . }}
app.kubernetes.io/name: {{ include "acci-framework.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "acci-framework.labels" -}}
helm.sh/chart: {{ include "acci-framework.chart" . }}
{{ include "acci-framework.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* repository@digest when image.digest is set (what acci_ops releases deploy), else repository:tag. */}}
{{- define "acci-framework.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "acci-framework.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "acci-framework.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding DATABASE_URL and REDIS_URL. Fails the render with an actionable message
when neither an existing Secret nor the URLs are given, so a release can never start without a database.
*/}}
{{- define "acci-framework.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- $_ := required "acci-framework: set secrets.databaseUrl (postgres://USER:PASSWORD@HOST:5432/acci) or existingSecret (a Secret with DATABASE_URL and REDIS_URL)" .Values.secrets.databaseUrl }}
{{- $_ := required "acci-framework: set secrets.redisUrl (redis://:PASSWORD@HOST:6379/0) or existingSecret (a Secret with DATABASE_URL and REDIS_URL)" .Values.secrets.redisUrl }}
{{- printf "%s-secrets" (include "acci-framework.fullname" .) }}
{{- end }}
{{- end }}
