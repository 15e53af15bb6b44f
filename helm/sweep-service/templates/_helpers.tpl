{{/* Names, labels and the values several templates share. */}}

{{- define "sweep-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-sweep-service, or the release name alone when it already contains the chart name. */}}
{{- define "sweep-service.fullname" -}}
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

{{- define "sweep-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sweep-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sweep-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sweep-service.labels" -}}
helm.sh/chart: {{ include "sweep-service.chart" . }}
{{ include "sweep-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sweep-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sweep-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount the API runs as (or set serviceAccount.create=true)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sweep-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Ray pods run the same image as the API unless config.image says otherwise. */}}
{{- define "sweep-service.rayImage" -}}
{{- default (include "sweep-service.image" .) .Values.config.image }}
{{- end }}

{{/*
The Secret holding the single admin token: the user's (auth.existingSecret) or the chart's (from
auth.token); "" when there is none, which is fine only with a tokens file (auth.tokensSecret).
An API without any token would refuse every request, so rendering stops here and says how to fix it.
*/}}
{{- define "sweep-service.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.token }}
{{- printf "%s-token" (include "sweep-service.fullname" .) }}
{{- else if not .Values.auth.tokensSecret }}
{{- fail "\n\nsweep-service: the API needs a bearer token. Either\n  kubectl create secret generic sweep-api-token --from-literal=token=$(openssl rand -hex 32)\n  and install with --set auth.existingSecret=sweep-api-token\nor install with --set auth.token=<token> (the chart then creates the Secret),\nor give it users and roles: a tokens file in a Secret, --set auth.tokensSecret=sweep-api-users\n(see auth.tokensSecret in values.yaml).\n" }}
{{- end }}
{{- end }}
