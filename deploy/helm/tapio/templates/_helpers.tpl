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

{{/* repository:tag, or repository@digest when a digest pins the image. */}}
{{- define "tapio.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The one path both sides read a token from; the agent's config key controller.token_file. */}}
{{- define "tapio.tokenDir" -}}/var/run/secrets/tapio{{- end -}}

{{- define "tapio.validate" -}}
{{- if not (has .Values.auth.mode (list "kubernetes" "token" "none")) -}}
{{- fail (printf "auth.mode must be kubernetes, token or none, not %q" .Values.auth.mode) -}}
{{- end -}}
{{- range $name, $image := pick .Values.image "agent" "controller" -}}
{{- if and $image.digest (not (regexMatch "^sha256:[0-9a-f]{64}$" $image.digest)) -}}
{{- fail (printf "image.%s.digest must be sha256: and 64 lower-case hex digits, not %q" $name $image.digest) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.agent.seccompProfile (list "Unconfined" "RuntimeDefault")) -}}
{{- fail (printf "agent.seccompProfile must be Unconfined or RuntimeDefault, not %q" .Values.agent.seccompProfile) -}}
{{- end -}}
{{- end -}}
