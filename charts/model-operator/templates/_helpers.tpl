{{/* Names: the release's full name prefixes every object, so two releases do not collide. */}}
{{- define "model-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "model-operator.nodeAgentName" -}}
{{- printf "%s-node-agent" (include "model-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-operator.activatorName" -}}
{{- printf "%s-activator" (include "model-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "model-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "model-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: model-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The operator's pods; the Services and the anti-affinity select them by these. */}}
{{- define "model-operator.selectorLabels" -}}
app.kubernetes.io/name: model-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "model-operator.activatorSelectorLabels" -}}
app.kubernetes.io/name: model-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: activator
{{- end -}}

{{- define "model-operator.nodeAgentSelectorLabels" -}}
app.kubernetes.io/name: node-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gpu-metrics
{{- end -}}

{{- define "model-operator.operatorImage" -}}
{{- printf "%s:%s" .Values.image.operator.repository (default .Chart.AppVersion .Values.image.operator.tag) -}}
{{- end -}}

{{- define "model-operator.nodeAgentImage" -}}
{{- printf "%s:%s" .Values.image.nodeAgent.repository (default .Chart.AppVersion .Values.image.nodeAgent.tag) -}}
{{- end -}}
