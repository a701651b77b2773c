{{- define "seekd.name" -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}

{{- define "seekd.labels" -}}
app.kubernetes.io/name: seekd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "seekd.selector" -}}
app.kubernetes.io/name: seekd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "seekd.routerSelector" -}}
app.kubernetes.io/name: seekd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "seekd.secretName" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "seekd.name" .)) -}}
{{- end -}}

{{- define "seekd.routerSecretName" -}}
{{- .Values.router.existingSecret | default (printf "%s-router-key" (include "seekd.name" .)) -}}
{{- end -}}

{{- define "seekd.modelClaim" -}}
{{- .Values.modelStore.existingClaim | default (printf "%s-models" (include "seekd.name" .)) -}}
{{- end -}}

{{- define "seekd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- /* The port seekd listens on: the chart sets SEEKD_PORT from it. */ -}}
{{- define "seekd.port" -}}{{ .Values.settings.port | default 8000 }}{{- end -}}

{{- /* SIGTERM to exit: preStop sleep, drain_timeout_s, the server's cut-off and close (5 + 5 s), margin. */ -}}
{{- define "seekd.terminationGrace" -}}
{{ add .Values.preStopSleepSeconds (int .Values.settings.drain_timeout_s) 30 }}
{{- end -}}
