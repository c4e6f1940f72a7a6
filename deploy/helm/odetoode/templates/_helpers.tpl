{{- define "odetoode.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "odetoode.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "odetoode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "odetoode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "odetoode.labels" -}}
{{ include "odetoode.selectorLabels" . }}
app.kubernetes.io/part-of: odetoode
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "odetoode.image" -}}
{{- $image := ternary .Values.gpu.image .Values.image .Values.gpu.enabled -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The server settings after the GPU switch: a dict of ServerSettings field -> value. */}}
{{- define "odetoode.settings" -}}
{{- $settings := deepCopy .Values.settings -}}
{{- if .Values.gpu.enabled -}}
{{- $_ := set $settings "providers" .Values.gpu.providers -}}
{{- end -}}
{{- toYaml $settings -}}
{{- end -}}

{{/* Refuses values whose shutdown cannot finish before the kubelet's SIGKILL. */}}
{{- define "odetoode.checkDrain" -}}
{{- $settings := include "odetoode.settings" . | fromYaml -}}
{{- $drain := int (ceil (float64 (default 10 $settings.drain_grace_s))) -}}
{{- $needed := add (int .Values.preStopSleepSeconds) $drain -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + settings.drain_grace_s (%d)" (int .Values.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- end -}}
