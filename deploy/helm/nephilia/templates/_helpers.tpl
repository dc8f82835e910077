{{/* Labels every object of the release carries. */}}
{{- define "nephilia.labels" -}}
app.kubernetes.io/name: nephilia
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: nephilia
{{- end }}

{{/* The agent's pods: the DaemonSet selector. */}}
{{- define "nephilia.agentSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The server's pods: the Deployment and Service selector. */}}
{{- define "nephilia.serverSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}
