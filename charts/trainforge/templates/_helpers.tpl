{{/* Names, labels and the two derived lists every template shares. */}}

{{- define "trainforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trainforge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trainforge.labels" -}}
{{ include "trainforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trainforge.serviceAccountName" -}}
{{- default (include "trainforge.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "trainforge.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "trainforge.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* Namespaces whose jobs get the trainer ServiceAccount and Role, as a JSON list: never the
release's own unless trainer.allowJobsInReleaseNamespace (the operator refuses jobs there too). */}}
{{- define "trainforge.trainerNamespaces" -}}
{{- $list := .Values.trainer.namespaces -}}
{{- if not $list -}}{{- $list = .Values.watchNamespaces -}}{{- end -}}
{{- if not $list -}}{{- $list = list "default" -}}{{- end -}}
{{- if not .Values.trainer.allowJobsInReleaseNamespace -}}{{- $list = without $list .Release.Namespace -}}{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/* kopf peering is on when more than one replica runs. */}}
{{- define "trainforge.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}{{ include "trainforge.fullname" . }}{{- end -}}
{{- end -}}

{{/* A string map as k=v,k2=v2 (sorted by key), for an env var. */}}
{{- define "trainforge.pairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
