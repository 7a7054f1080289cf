{{/* The operator's namespace: namespace.name, else the release namespace. */}}
{{- define "rbd-operator.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{/* Helm's own labels (tests/unit/test_chart.py removes exactly these before comparing with deploy/). */}}
{{- define "rbd-operator.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* extraLabels, keys and values quoted: `--set extraLabels.tier=2` gives a number, a key `on` is a YAML boolean. */}}
{{- define "rbd-operator.extraLabels" -}}
{{- range $key, $value := .Values.extraLabels }}
{{ $key | quote }}: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/* Helm's labels + extraLabels: objects that deploy/ leaves unlabelled. */}}
{{- define "rbd-operator.labels" -}}
{{ include "rbd-operator.helmLabels" . }}
{{- include "rbd-operator.extraLabels" . }}
{{- end -}}

{{/* The operator's selector label (immutable in the Deployment: the same as deploy/'s). */}}
{{- define "rbd-operator.selectorLabels" -}}
app.kubernetes.io/name: rbd-operator
{{- end -}}

{{/* Objects that deploy/ labels app.kubernetes.io/name: rbd-operator. */}}
{{- define "rbd-operator.nameLabels" -}}
{{ include "rbd-operator.selectorLabels" . }}
{{ include "rbd-operator.labels" . }}
{{- end -}}

{{/* CRD metadata: labels, and the keep policy. */}}
{{- define "rbd-operator.crdMetadata" -}}
labels:
  {{- include "rbd-operator.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end -}}

{{- define "rbd-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
