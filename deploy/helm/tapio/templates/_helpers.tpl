{{/* Shared names and labels of the Tapio chart. */}}

{{- define "tapio.labels" -}}
app.kubernetes.io/part-of: tapio
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tapio.agentSelector" -}}
app.kubernetes.io/name: tapio-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tapio.controllerSelector" -}}
app.kubernetes.io/name: tapio-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tapio.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The one path both sides read a token from; the agent's config key controller.token_file. */}}
{{- define "tapio.tokenDir" -}}/var/run/secrets/tapio{{- end -}}

{{- define "tapio.validate" -}}
{{- if not (has .Values.auth.mode (list "kubernetes" "token" "none")) -}}
{{- fail (printf "auth.mode must be kubernetes, token or none, not %q" .Values.auth.mode) -}}
{{- end -}}
{{- if not (has .Values.agent.seccompProfile (list "Unconfined" "RuntimeDefault")) -}}
{{- fail (printf "agent.seccompProfile must be Unconfined or RuntimeDefault, not %q" .Values.agent.seccompProfile) -}}
{{- end -}}
{{- end -}}
