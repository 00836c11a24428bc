{{/*
Named templates of the canary release (values `canary.*`). They live in a file of their own so that a
chart with the canary off renders byte for byte what it rendered before canary support existed.
*/}}

{{/*
The canary pods' `app` label. It differs from the stable one (`app: <name>`) on purpose: the stable
Service, PDB and NetworkPolicy select on the stable labels and must never pick up a canary pod, or the
stable share of the traffic would reach the canary too. The name is cut to 56 characters so the
suffix always survives the 63-character label limit.
*/}}
{{- define "acci-framework.canary.name" -}}
{{- printf "%s-canary" (include "acci-framework.name" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "acci-framework.canary.fullname" -}}
{{- printf "%s-canary" (include "acci-framework.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "acci-framework.canary.selectorLabels" -}}
app: {{ include "acci-framework.canary.name" . }}
app.kubernetes.io/name: {{ include "acci-framework.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: canary
{{- end }}

{{- define "acci-framework.canary.labels" -}}
helm.sh/chart: {{ include "acci-framework.chart" . }}
{{ include "acci-framework.canary.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The traffic mode, refused early when it is neither of the two the chart can render. */}}
{{- define "acci-framework.canary.traffic" -}}
{{- $traffic := .Values.canary.traffic | default "gateway" }}
{{- if not (has $traffic (list "gateway" "ingress-nginx")) }}
{{- fail (printf "acci-framework: canary.traffic %q is neither gateway (Gateway API HTTPRoute weights) nor ingress-nginx (canary Ingress annotations)" (toString $traffic)) }}
{{- end }}
{{- $traffic }}
{{- end }}

{{/*
The canary's share of the traffic as a whole percentage 0-100; anything else (a fraction, a word, 150)
fails the render, because a weight the traffic layer reads differently would send an unknown share.
*/}}
{{- define "acci-framework.canary.weight" -}}
{{- $raw := toString .Values.canary.weight }}
{{- if not (regexMatch "^[0-9]{1,3}$" $raw) }}
{{- fail (printf "acci-framework: canary.weight %q is not a whole percentage 0-100" $raw) }}
{{- end }}
{{- if gt (atoi $raw) 100 }}
{{- fail (printf "acci-framework: canary.weight %s is above 100" $raw) }}
{{- end }}
{{- atoi $raw }}
{{- end }}

{{/* repository@digest of the canary: never a tag, so what is analysed is exactly what gets promoted. */}}
{{- define "acci-framework.canary.image" -}}
{{- $digest := required "acci-framework: canary.enabled needs canary.image.digest (sha256:<64 hex>): a canary runs an image named by digest" .Values.canary.image.digest }}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $digest) }}
{{- fail (printf "acci-framework: canary.image.digest %q is not sha256:<64 lowercase hex digits>" $digest) }}
{{- end }}
{{- printf "%s@%s" (.Values.canary.image.repository | default .Values.image.repository) $digest }}
{{- end }}

{{/* The HTTPRoute's hostnames: canary.gateway.hostnames, else the Ingress's host(s). */}}
{{- define "acci-framework.canary.hostnames" -}}
{{- $hosts := list }}
{{- if .Values.canary.gateway.hostnames }}
{{- $hosts = .Values.canary.gateway.hostnames }}
{{- else if .Values.ingress.host }}
{{- $hosts = list .Values.ingress.host }}
{{- else }}
{{- range .Values.ingress.hosts }}
{{- if .host }}{{ $hosts = append $hosts .host }}{{ end }}
{{- end }}
{{- end }}
{{- toYaml (uniq $hosts) }}
{{- end }}
